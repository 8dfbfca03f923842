"""Builds the gateway: settings -> stores -> workflows -> channels, on a Nexus app; `serve` runs it.

`python nexus_app.py` and `external-agents serve` both serve it (127.0.0.1:8000 unless told otherwise).
"""

from __future__ import annotations

import gc
import inspect
import logging
import re
import socket
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from external_agents.app_state import AppState, build_state
from external_agents.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from kailash.workflow import Workflow
    from nexus import Nexus

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


class InstallError(RuntimeError):
    """The host app cannot take the feature as it stands: already installed, already serving, or a path is taken."""


# Nexus serves these itself; ours replace them (ours needs a key with read:metrics, Nexus's needs nothing).
NEXUS_BUILT_IN_MODULES = ("kailash.", "nexus.")
# Served only when the host has none of its own: a host's health and version answer for the whole app.
OPTIONAL_PATHS = frozenset({"/api/health", "/api/version"})


class OwnRoutesMiddleware:
    """Sends requests for the feature's routes through `guard` (size limits, then bearer auth); every other
    request goes straight on, so a host's own routes keep exactly the auth and limits the host gave them.

    `owns` decides by path; the standalone server owns every path, so it protects Nexus's routes and /ws too.
    """

    def __init__(self, app: ASGIApp, *, owns: Callable[[str], bool], guard: Callable[[ASGIApp], ASGIApp]) -> None:
        self.app = app
        self.owns = owns
        self.guarded = guard(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.owns(scope["path"]):
            await self.guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def install(
    app: Nexus,
    settings: Settings,
    *,
    workflows: Mapping[str, Workflow] | None = None,
    protect_all_routes: bool = False,
) -> AppState:
    """Add External Agents to a host's Nexus app, before it starts serving; returns the feature's state.

    Mounts the REST routes (/api/external-agents..., /api/policies, /api/lineage, /api/workflows, and
    /api/health and /api/version unless the host has its own), MCP at /mcp and our /metrics (in place of
    Nexus's unauthenticated one). Bearer API keys, size limits and our error bodies apply to those routes only,
    unless `protect_all_routes` (the standalone server's choice) puts every route, Nexus's included, behind the
    key. Our clients open and close with the app's lifespan, inside the host's own lifespan.

    `workflows`: the host's workflows that /api/workflows/{id}/execute (and MCP's execute_workflow) run with
    their external-agent invocations governed; none when omitted. Nexus's own /workflows/{name}/execute
    routes are left exactly as they are.
    Raises InstallError when installed twice, when the app already serves, or when a host route takes one of
    our paths (nothing is changed then).
    """
    from fastapi import APIRouter

    from external_agents.channels.auth import BearerAuthMiddleware
    from external_agents.channels.error_responses import install_error_handlers
    from external_agents.channels.lineage_api import router as lineage_router
    from external_agents.channels.mcp_server import MCP_PATH, mount_mcp, running
    from external_agents.channels.metrics import router as metrics_router
    from external_agents.channels.policies_api import router as policies_router
    from external_agents.channels.rest_api import router as rest_router
    from external_agents.channels.workflows_api import router as workflows_router

    fastapi_app = app.fastapi_app
    if getattr(fastapi_app.state, "external_agents", None) is not None:
        raise InstallError("External Agents is already installed on this app; call install() once")
    if fastapi_app.middleware_stack is not None:
        raise InstallError("The app is already serving; call install() before it starts")
    host_routes = _served_routes(fastapi_app.router.routes)
    taken = {_template(path) for path, _route in host_routes}
    our_routes = [
        route
        for router in (rest_router, lineage_router, policies_router, workflows_router, metrics_router)
        for route in router.routes
        if not (route.path in OPTIONAL_PATHS and route.path in taken)
    ]
    conflicts = _conflicts(host_routes, [*(route.path for route in our_routes), MCP_PATH])
    if conflicts:
        raise InstallError(
            f"Cannot install External Agents: the app already serves {', '.join(conflicts)}; "
            "remove or move those routes first"
        )

    state = build_state(settings, host_workflows=dict(workflows or {}))
    routes = fastapi_app.router.routes
    routes[:] = [route for route in routes if not _nexus_metrics(route)]
    feature = APIRouter()
    feature.routes.extend(our_routes)
    fastapi_app.include_router(feature)
    before = {id(route) for route in routes}
    mcp_sessions = mount_mcp(fastapi_app, state)
    mcp_routes = [route for route in routes if id(route) not in before]
    owns = _everything if protect_all_routes else _any_of([*our_routes, *mcp_routes])

    previous_handlers = dict(fastapi_app.exception_handlers)
    install_error_handlers(fastapi_app)
    if not protect_all_routes:
        _scope_error_handlers(fastapi_app, previous=previous_handlers, owns=owns)

    def guard(inner: ASGIApp) -> ASGIApp:
        # Size limits outermost, so an oversized request costs no key lookup and no route.
        return RequestLimitsMiddleware(
            BearerAuthMiddleware(inner, keys_of=lambda: state.keys),
            max_body_bytes=settings.kaizen_max_body_bytes,
            max_header_bytes=settings.kaizen_max_header_bytes,
        )

    fastapi_app.add_middleware(OwnRoutesMiddleware, owns=owns, guard=guard)

    host_lifespan = fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with host_lifespan(asgi_app) as host_state:
            await state.start()
            try:
                async with running(mcp_sessions):
                    yield host_state
            finally:
                await state.aclose()

    fastapi_app.router.lifespan_context = lifespan
    fastapi_app.state.external_agents = state
    app.external_agents = state
    return state


def _served_routes(routes: list[Any]) -> list[tuple[str, Any]]:
    """(path, route) of every route the app serves, with the routers it included flattened (FastAPI from 0.16x
    keeps an included router as one lazy entry)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [(route.path, route) for route in routes if getattr(route, "path", None) is not None]
    return [(ctx.path, ctx.original_route) for ctx in iter_route_contexts(routes) if ctx.path is not None]


def _template(path: str) -> str:
    """The path with its parameter names blanked: /a/{id} and /a/{agent_id} are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _conflicts(host_routes: list[tuple[str, Any]], our_paths: list[str]) -> list[str]:
    """The host's routes that would answer one of our paths: the same path, or a mount at or above it."""
    ours = {_template(path) for path in our_paths}
    found = set()
    for path, route in host_routes:
        if _nexus_metrics(route):
            continue
        if isinstance(route, Mount):
            prefix = path.rstrip("/")
            if any(p == prefix or p.startswith(prefix + "/") for p in ours):
                found.add(f"a mount at {path or '/'}")
        elif _template(path) in ours:
            found.add(path)
    return sorted(found)


def _nexus_metrics(route: Any) -> bool:
    module = getattr(getattr(route, "endpoint", None), "__module__", "") or ""
    return getattr(route, "path", None) == "/metrics" and module.startswith(NEXUS_BUILT_IN_MODULES)


def _everything(_path: str) -> bool:
    return True


def _any_of(routes: list[Any]) -> Callable[[str], bool]:
    patterns = [route.path_regex for route in routes]

    def owns(path: str) -> bool:
        return any(pattern.match(path) for pattern in patterns)

    return owns


def _scope_error_handlers(fastapi_app: Any, *, previous: dict[Any, Any], owns: Callable[[str], bool]) -> None:
    """Our error bodies for our routes; for the host's, whatever answered before (FastAPI's defaults included).

    Where the host had no handler, the error goes on as it did: re-raised, or for the catch-all the plain 500
    Starlette sends itself.
    """
    for key, ours in list(fastapi_app.exception_handlers.items()):
        if previous.get(key) is ours:
            continue
        fastapi_app.exception_handlers[key] = _scoped(ours, previous.get(key), owns=owns, catch_all=key is Exception)


def _scoped(ours: Any, theirs: Any, *, owns: Callable[[str], bool], catch_all: bool) -> Any:
    async def handle(request: Request, exc: Exception) -> Response:
        if owns(request.scope["path"]):
            return await ours(request, exc)
        if theirs is not None:
            result = theirs(request, exc)
            return await result if inspect.isawaitable(result) else result
        if catch_all:
            return PlainTextResponse("Internal Server Error", status_code=500)
        raise exc

    return handle


def build_app(settings: Settings, *, workflows: dict[str, Any] | None = None) -> Any:
    """The standalone server: a Nexus app of its own with the feature installed, every route behind the key.

    `workflows`: the application's workflows, served by /api/workflows/{id}/execute; the two example
    workflows (`greeting`, `notify_agent`) when omitted, as the command line's local gateway serves.
    """
    from nexus import Nexus

    from external_agents.gateway.metrics import MeteredRunner
    from external_agents.workflows.examples import build_example_workflows

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
    # Today's standalone contract (tests/integration/test_security_matrix.py): nothing, Nexus's own routes and
    # /ws included, answers without a key except /api/health and /api/version.
    state = install(app, settings, workflows=workflows, protect_all_routes=True)
    if workflows is None:
        # Invocations started inside these workflows are counted in the metrics like the channels' own.
        metered = MeteredRunner(
            state.runner, invoke_workflow=state.invoke, pipeline=state.pipeline, metrics=state.metrics
        )
        state.host_workflows = build_example_workflows(runner=metered, invoke_workflow=state.invoke)

    fastapi_app = app.fastapi_app
    feature_lifespan = fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with feature_lifespan(asgi_app) as app_state:
            # Everything loaded so far (~240k objects of kailash, nexus, dataflow) lives as long as the process;
            # frozen, the collector stops re-scanning it, which was the main source of p95 latency spikes.
            gc.collect()
            gc.freeze()
            yield app_state

    fastapi_app.router.lifespan_context = lifespan
    return app


def ensure_migrated(settings: Settings) -> None:
    """Refuse to serve an unmigrated PostgreSQL database; bring the embedded SQLite file, ours alone, up to date."""
    from external_agents.models.migrate import status, upgrade

    if status(settings).state == "applied":
        return
    if not settings.is_sqlite:
        raise StartupError("the database is not migrated: run `external-agents migrate` first")
    upgrade(settings, report=lambda line: sys.stderr.write(line + "\n"))


def check_redis(settings: Settings) -> None:
    """Refuse to start without Redis when rate limits fail closed (every invocation would be refused); when they
    fail open, say once that limits are per instance until Redis answers, and serve (SPEC §5: degraded)."""
    if not settings.redis_url:
        return
    import redis

    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        if not settings.external_agent_rate_limit_fail_open:
            raise StartupError(
                f"Redis cannot be reached ({type(exc).__name__}) and EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN is false, "
                "so every invocation would be refused: start Redis or fix REDIS_URL"
            ) from None
        sys.stderr.write(
            f"warning: Redis cannot be reached ({type(exc).__name__}); serving degraded, with rate limits per "
            "instance until it answers\n"
        )
    finally:
        client.close()


def app_from_environment() -> Any:
    """The ASGI app built from the environment: what each `serve --workers N` worker process runs."""
    return build_app(load_settings()).fastapi_app


class StartupError(Exception):
    """`serve` cannot start as things are: its port is taken (or the address is not this host's), or the database
    is not migrated. The environment needs fixing, not the command (the CLI exits 5)."""


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts.

    Left to uvicorn, a busy port is found only after the app's lifespan has started (Redis listeners, the
    journal replay), and uvicorn's exit path then waited on that lifespan, ignoring SIGTERM and SIGINT.
    """
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(*, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, settings: Settings | None = None) -> None:
    """Serve the API; with `workers` > 1, as that many processes sharing the port (limits then live in Redis)."""
    settings = settings or load_settings()
    sock = listening_socket(host, port)
    try:
        _serve_on(sock, host=host, port=port, workers=workers, settings=settings)
    finally:
        sock.close()


def _serve_on(sock: socket.socket, *, host: str, port: int, workers: int, settings: Settings) -> None:
    import asyncio

    import uvicorn

    # Redis first: a refusal must come before the embedded database is migrated (whose report would precede it).
    check_redis(settings)
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
        # The workers bind the port themselves (SO_REUSEADDR): the check above already found it free.
        sock.close()
        uvicorn.run("external_agents.nexus_app:app_from_environment", factory=True, workers=workers, **options)
    else:
        uvicorn.Server(uvicorn.Config(build_app(settings).fastapi_app, **options)).run(sockets=[sock])


if __name__ == "__main__":
    try:
        serve()
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
    except StartupError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(5)
