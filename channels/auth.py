"""Bearer API-key authentication for every HTTP route except health and version, as one ASGI middleware.

It runs before any route, including those Nexus mounts itself, so nothing is reachable without a key:
WebSocket handshakes too (Nexus mounts an echo socket at /ws), which are refused with the same 401 (or a
policy-violation close where the server cannot send a response to a handshake).
The authenticated `Caller` is put on the request scope for routes to read.

Known keys are served from the process's key cache (stores/api_key_cache.py), which every instance empties of a
key the moment it is revoked anywhere. `caller_for_key` is that lookup on its own, for channels without a request
per call: the MCP stdio session runs it before every tool call, so a key revoked mid-session is refused there as
it is here, with the same status and detail.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from external_agents.channels.error_responses import error_response, send_refusal
from external_agents.errors import ForbiddenError
from external_agents.stores.api_key_cache import ApiKeyCache
from external_agents.stores.api_keys import Caller

logger = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/api/health", "/api/version"})
INVALID_KEY = "Invalid or revoked API key"
LOOKUP_UNAVAILABLE = "Authentication unavailable: the database is unreachable"


class KeyRefusedError(Exception):
    """The key cannot be used: 401 (unknown or revoked) or 503 (the database could not be asked)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


async def caller_for_key(keys: ApiKeyCache, key: str, *, request_id: str) -> Caller:
    """The caller `key` belongs to; raise KeyRefusedError when it is unknown, revoked or unknowable."""
    try:
        caller = await keys.caller(key)
    except Exception as exc:
        logger.error("auth.lookup_failed request_id=%s error=%s", request_id, type(exc).__name__)
        raise KeyRefusedError(503, LOOKUP_UNAVAILABLE) from None
    if caller is None:
        raise KeyRefusedError(401, INVALID_KEY)
    return caller


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, *, keys_of: Callable[[], ApiKeyCache]) -> None:
        self.app = app
        self.keys_of = keys_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        if scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        key = _bearer_key(scope)
        if key is None:
            await _reject(scope, receive, send, request_id, "Missing or malformed Authorization: Bearer <api key>")
            return
        try:
            caller = await caller_for_key(self.keys_of(), key, request_id=request_id)
        except KeyRefusedError as refused:
            if refused.status_code == 401:
                await _reject(scope, receive, send, request_id, refused.detail)
            else:
                response = error_response(
                    refused.status_code, refused.detail, request_id=request_id, headers={"Retry-After": "1"}
                )
                await send_refusal(scope, receive, send, response)
            return
        state["caller"] = caller
        await self.app(scope, receive, send)


def _bearer_key(scope: Scope) -> str | None:
    for name, raw in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = raw.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _reject(scope: Scope, receive: Receive, send: Send, request_id: str, detail: str) -> None:
    response = error_response(401, detail, request_id=request_id, headers={"WWW-Authenticate": "Bearer"})
    await send_refusal(scope, receive, send, response)


def caller_with(request: Request, permission: str) -> Caller:
    """The authenticated caller, if it holds `permission` (or admin)."""
    caller: Caller = request.state.caller
    if not caller.can(permission):
        raise ForbiddenError(f"This API key lacks the '{permission}' permission")
    return caller
