"""Builds the gateway: settings -> stores -> workflows -> channels, on a Nexus app; `serve` runs it.

`python nexus_app.py` and `external-agents serve` both serve it (127.0.0.1:8000 unless told otherwise).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from app_state import AppState, build_state
from settings import Settings, SettingsError, load_settings

logger = logging.getLogger("external_agents")


def configure_logging(level: int = logging.INFO) -> None:
    """Our own lines at INFO; the SDKs' start-up chatter (importing nexus sets INFO everywhere) at WARNING."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    for noisy in ("kailash", "nexus", "dataflow", "httpx", "uvicorn.access", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Nexus's own secret store is unused here; its "KAILASH_ENCRYPTION_KEY is unset" error is noise.
    logging.getLogger("kailash.gateway.security").setLevel(logging.CRITICAL)
    # The runtime logs every node exception at ERROR, a 400 for bad input included; faults are logged by
    # the channels' error handler instead, with the request id.
    logging.getLogger("kailash.runtime").setLevel(logging.CRITICAL)


async def ensure_bootstrap_key(state: AppState) -> str | None:
    """Make sure someone can call the API: the configured bootstrap key, or a one-time key on an empty table.

    Returns a newly generated key (to be shown once), or None.
    """
    from stores.api_keys import create_api_key, has_any_key, key_exists

    settings = state.settings
    if settings.kaizen_bootstrap_api_key:
        if not await key_exists(state.engine, settings.kaizen_bootstrap_api_key):
            await create_api_key(
                state.engine,
                organization_id=settings.kaizen_bootstrap_org,
                name="bootstrap",
                permissions=["admin"],
                key=settings.kaizen_bootstrap_api_key,
            )
        return None
    if await has_any_key(state.engine):
        return None
    _row, key = await create_api_key(
        state.engine, organization_id=settings.kaizen_bootstrap_org, name="bootstrap", permissions=["admin"]
    )
    return key


def build_app(settings: Settings) -> Any:
    """The Nexus app with the REST routes, auth and error handling installed; resources open with its lifespan."""
    from nexus import Nexus

    from channels.auth import BearerAuthMiddleware
    from channels.error_responses import install_error_handlers
    from channels.rest_api import router

    configure_logging()
    app = Nexus(
        api_port=8000,
        auto_discovery=False,
        enable_durability=False,
        enable_monitoring=False,
        # Our own governance limits invocations per agent; Nexus's per-IP limiter would refuse legitimate load.
        rate_limit=None,
        max_request_body_bytes=settings.kaizen_max_body_bytes,
    )
    configure_logging()
    state = build_state(settings)
    fastapi_app = app.fastapi_app
    fastapi_app.state.external_agents = state
    fastapi_app.include_router(router)
    install_error_handlers(fastapi_app)
    fastapi_app.add_middleware(BearerAuthMiddleware, engine_of=lambda: state.engine)

    nexus_lifespan = fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with nexus_lifespan(asgi_app) as nexus_state:
            new_key = await ensure_bootstrap_key(state)
            if new_key:
                # Shown once on the console, on purpose never through logging.
                sys.stderr.write(
                    f"Created the first admin API key for organization '{settings.kaizen_bootstrap_org}'. "
                    f"It is shown only now:\n{new_key}\n"
                )
                sys.stderr.flush()
            try:
                yield nexus_state
            finally:
                await state.aclose()

    fastapi_app.router.lifespan_context = lifespan
    app.external_agents = state
    return app


def serve(*, host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    import uvicorn

    app = build_app(settings or load_settings())
    uvicorn.run(app.fastapi_app, host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    try:
        serve()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
