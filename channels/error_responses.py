"""The one place where errors become HTTP responses: `{status_code, detail, error_code, timestamp, request_id}`.

A request that fails because the database cannot be reached (stopped, restarting, every pooled connection
dropped, the pool exhausted) is a 503 the client may retry, not a 500: nothing is wrong with the request.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from external_agents.errors import ExternalAgentsError
from external_agents.stores.database import database_fault
from external_agents.workflows.runner import WorkflowFailedError

logger = logging.getLogger(__name__)

_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    402: "BUDGET_EXCEEDED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMIT_EXCEEDED",
    431: "HEADERS_TOO_LARGE",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


def request_id_of(request: Request | None) -> str:
    if request is not None and getattr(request.state, "request_id", None):
        return request.state.request_id
    return uuid.uuid4().hex


def error_body(
    status_code: int, detail: str, *, request_id: str, error_code: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "status_code": status_code,
        "detail": detail,
        "error_code": error_code or _CODES.get(status_code, "ERROR"),
        "timestamp": datetime.now(UTC).isoformat(),
        "request_id": request_id,
        **extra,
    }


def error_body_of(exc: ExternalAgentsError, *, request_id: str) -> dict[str, Any]:
    """The body one of our errors is answered with, on every channel (REST, MCP, the command line)."""
    return error_body(exc.status_code, exc.detail, request_id=request_id, error_code=exc.error_code, **exc.extra)


def error_response(
    status_code: int,
    detail: str,
    *,
    request_id: str,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = error_body(status_code, detail, request_id=request_id, error_code=error_code, **extra)
    return JSONResponse(body, status_code=status_code, headers={"X-Request-ID": request_id, **(headers or {})})


async def send_refusal(scope: Scope, receive: Receive, send: Send, response: Response) -> None:
    """Send an error response from a middleware, to an HTTP request or a WebSocket handshake alike.

    A handshake gets it as a denial response where the server supports that extension, else a close with
    1008 (policy violation), which the server answers with 403.
    """
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": ""})
        return
    await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    async def own_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ExternalAgentsError)
        request_id = request_id_of(request)
        headers = {"X-Request-ID": request_id}
        if exc.retry_after_seconds is not None:
            headers["Retry-After"] = str(exc.retry_after_seconds)
        return JSONResponse(error_body_of(exc, request_id=request_id), status_code=exc.status_code, headers=headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, str(exc.detail), request_id=request_id_of(request))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error_response(
            400, f"{field or 'request'}: {first.get('msg', 'invalid value')}", request_id=request_id_of(request)
        )

    async def fault(request: Request, exc: Exception) -> JSONResponse:
        detail = database_fault(exc)
        if detail is None:
            # Any other fault is the catch-all's to answer (500) and the server's to log.
            raise exc
        request_id = request_id_of(request)
        logger.warning("request.database_unreachable request_id=%s error=%s", request_id, type(exc).__name__)
        return error_response(503, detail, request_id=request_id, headers={"Retry-After": "1"})

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # The exception's text may carry user input or a driver's message: log its type only.
        request_id = request_id_of(request)
        logger.error("request.failed request_id=%s error=%s", request_id, type(exc).__name__)
        return error_response(500, "Internal server error", request_id=request_id)

    app.add_exception_handler(ExternalAgentsError, own_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    # The types a database outage surfaces as (wrapped by the workflow runner, or raised by a store directly).
    for fault_type in (WorkflowFailedError, sa_exc.SQLAlchemyError, asyncpg.exceptions.PostgresError, OSError):
        app.add_exception_handler(fault_type, fault)
    app.add_exception_handler(Exception, unexpected_error)
