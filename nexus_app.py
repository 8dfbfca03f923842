"""Builds the gateway: settings -> stores -> workflows -> channels, on a Nexus app; `serve` runs it.

`python nexus_app.py` and `external-agents serve` both serve it (127.0.0.1:8000 unless told otherwise).
"""

from __future__ import annotations

import gc
import logging
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from external_agents.app_state import build_state
from external_agents.settings import Settings, SettingsError, load_settings

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


async def ensure_bootstrap_key(settings: Settings) -> str | None:
    """Make sure someone can call the API: the configured bootstrap key, or a one-time key on an empty table.

    Returns a newly generated key (to be shown once), or None. Runs once per `serve`, before any worker starts.
    """
    from sqlalchemy.exc import IntegrityError

    from external_agents.stores.api_keys import create_api_key, has_any_key, key_exists
    from external_agents.stores.database import create_engine

    engine = create_engine(settings)
    try:
        if settings.kaizen_bootstrap_api_key:
            if not await key_exists(engine, settings.kaizen_bootstrap_api_key):
                try:
                    await create_api_key(
                        engine,
                        organization_id=settings.kaizen_bootstrap_org,
                        name="bootstrap",
                        permissions=["admin"],
                        key=settings.kaizen_bootstrap_api_key,
                    )
                except IntegrityError:
                    pass  # another instance starting at the same time stored it first
            return None
        if await has_any_key(engine):
            return None
        _row, key = await create_api_key(
            engine, organization_id=settings.kaizen_bootstrap_org, name="bootstrap", permissions=["admin"]
        )
        return key
    finally:
        await engine.dispose()


class RequestLimitsMiddleware:
    """431 for headers over KAIZEN_MAX_HEADER_BYTES and 413 for bodies over KAIZEN_MAX_BODY_BYTES, before any work;
    400 for a NUL character in the URL (path or query).

    Outermost, so an oversized request costs no key lookup and no route. Nexus's own `max_request_body_bytes`
    guards only its extractor-based handlers; our routes read `request.body()` themselves, so without this a
    client could make the server buffer any amount. A declared Content-Length over the limit is refused
    without reading a byte; a body without one (chunked) is read here up to the limit, then handed on.
    PostgreSQL cannot hold U+0000 in text, so a NUL in an id or a query value would fail deep in a store as a
    500; no URL of this API needs one.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(name) + len(value) for name, value in scope["headers"])
        if header_bytes > self.max_header_bytes:
            detail = f"Request headers total {header_bytes} bytes; the limit is {self.max_header_bytes}"
            await _refuse(scope, receive, send, 431, detail)
            return
        if _has_nul(scope["query_string"]) or "\x00" in scope["path"]:
            await _refuse(scope, receive, send, 400, "The NUL character (U+0000, %00) is not allowed in a URL")
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _refuse(scope, receive, send, 400, "Content-Length must be a non-negative integer")
            return
        if declared > self.max_body_bytes:
            await _refuse(scope, receive, send, 413, self._too_large(declared))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _refuse(scope, receive, send, 413, self._too_large(len(body), at_least=True))
                return
            if not message.get("more_body", False):
                break
        pending: deque[Message] = deque([{"type": "http.request", "body": bytes(body), "more_body": False}])

        async def replay() -> Message:
            # After the body, the server's own receive reports the disconnect that streaming responses wait for.
            return pending.popleft() if pending else await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int, *, at_least: bool = False) -> str:
        return f"Request body is {'over ' if at_least else ''}{size} bytes; the limit is {self.max_body_bytes}"


def _has_nul(query: bytes) -> bool:
    return b"\x00" in query or b"%00" in query


def _content_length(scope: Scope) -> int | None:
    """The declared body length (0 when none is declared), or None when the header is not a valid length."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return 0


async def _refuse(scope: Scope, receive: Receive, send: Send, status_code: int, detail: str) -> None:
    from external_agents.channels.error_responses import error_response, send_refusal

    response = error_response(status_code, detail, request_id=uuid.uuid4().hex, headers={"Connection": "close"})
    await send_refusal(scope, receive, send, response)


def build_app(settings: Settings, *, workflows: dict[str, Any] | None = None) -> Any:
    """The Nexus app with the REST routes, auth and error handling installed; resources open with its lifespan.

    `workflows`: the host application's existing workflows, served by /api/workflows/{id}/execute.
    """
    from nexus import Nexus

    from external_agents.channels.auth import BearerAuthMiddleware
    from external_agents.channels.error_responses import install_error_handlers
    from external_agents.channels.lineage_api import router as lineage_router
    from external_agents.channels.mcp_server import mount_mcp, running
    from external_agents.channels.metrics import router as metrics_router
    from external_agents.channels.policies_api import router as policies_router
    from external_agents.channels.rest_api import router
    from external_agents.channels.workflows_api import router as workflows_router

    configure_logging()
    app = Nexus(
        api_port=8000,
        auto_discovery=False,
        enable_durability=False,
        enable_monitoring=False,
        # Our own governance limits invocations per agent; Nexus's per-IP limiter would refuse legitimate load.
        rate_limit=None,
        max_request_body_bytes=settings.kaizen_max_body_bytes,
        max_request_header_bytes=settings.kaizen_max_header_bytes,
    )
    configure_logging()
    state = build_state(settings, host_workflows=workflows)
    fastapi_app = app.fastapi_app
    fastapi_app.state.external_agents = state
    fastapi_app.include_router(router)
    fastapi_app.include_router(lineage_router)
    fastapi_app.include_router(policies_router)
    fastapi_app.include_router(workflows_router)
    # Nexus serves its own unauthenticated /metrics; ours (per-app registry, read:metrics) must answer instead.
    fastapi_app.router.routes[:] = [r for r in fastapi_app.router.routes if getattr(r, "path", None) != "/metrics"]
    fastapi_app.include_router(metrics_router)
    mcp_sessions = mount_mcp(fastapi_app, state)
    install_error_handlers(fastapi_app)
    fastapi_app.add_middleware(BearerAuthMiddleware, engine_of=lambda: state.engine)
    # Added last, so it is the outermost layer: sizes are checked before authentication does any work.
    fastapi_app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.kaizen_max_body_bytes,
        max_header_bytes=settings.kaizen_max_header_bytes,
    )

    nexus_lifespan = fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with nexus_lifespan(asgi_app) as nexus_state:
            await state.start()
            # Everything loaded so far (~240k objects of kailash, nexus, dataflow) lives as long as the process;
            # frozen, the collector stops re-scanning it, which was the main source of p95 latency spikes.
            gc.collect()
            gc.freeze()
            try:
                async with running(mcp_sessions):
                    yield nexus_state
            finally:
                await state.aclose()

    fastapi_app.router.lifespan_context = lifespan
    app.external_agents = state
    return app


def ensure_migrated(settings: Settings) -> None:
    """Refuse to serve an unmigrated PostgreSQL database; bring the embedded SQLite file, ours alone, up to date."""
    from external_agents.models.migrate import status, upgrade

    if status(settings).state == "applied":
        return
    if not settings.is_sqlite:
        raise SettingsError("Invalid database: it is not migrated; run `external-agents migrate` first")
    upgrade(settings, report=lambda line: sys.stderr.write(line + "\n"))


def app_from_environment() -> Any:
    """The ASGI app built from the environment: what each `serve --workers N` worker process runs."""
    return build_app(load_settings()).fastapi_app


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, settings: Settings | None = None) -> None:
    """Serve the API; with `workers` > 1, as that many processes sharing the port (limits then live in Redis)."""
    import asyncio

    import uvicorn

    settings = settings or load_settings()
    ensure_migrated(settings)
    if workers > 1 and not settings.redis_url:
        raise SettingsError(
            "Invalid --workers: more than one worker needs REDIS_URL, so that rate limits are shared by the workers"
        )
    new_key = asyncio.run(ensure_bootstrap_key(settings))
    if new_key:
        # Shown once on the console, on purpose never through logging.
        sys.stderr.write(
            f"Created the first admin API key for organization '{settings.kaizen_bootstrap_org}'. "
            f"It is shown only now:\n{new_key}\n"
        )
        sys.stderr.flush()
    sys.stderr.write(f"Serving External Agents on http://{host}:{port}\n")
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False}
    if workers > 1:
        uvicorn.run("external_agents.nexus_app:app_from_environment", factory=True, workers=workers, **options)
    else:
        uvicorn.run(build_app(settings).fastapi_app, **options)


if __name__ == "__main__":
    try:
        serve()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
