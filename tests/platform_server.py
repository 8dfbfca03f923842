"""A real HTTP server on 127.0.0.1 standing in for every platform, so delivery is tested over real sockets.

Tests script responses per path (a queue of status, headers, body and delay; an empty queue answers 200 "ok")
and read back every request the server received, byte for byte. `/oauth/token` is an OAuth2 token endpoint
that hands out a new token (`token-1`, `token-2`, ...) on each call unless a test scripted that path.

It runs `http.server` in a thread: delays are plain sleeps in the handler thread, so a slow response never
blocks the test's event loop or another request. One server serves the session; `platform_server` resets
its scripts and records before each test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

TOKEN_PATH = "/oauth/token"


@dataclass(frozen=True)
class ScriptedResponse:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # bytes and str are sent as they are; anything else as JSON.
    body: Any = b""
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        if isinstance(self.body, bytes):
            return self.body, dict(self.headers)
        if isinstance(self.body, str):
            return self.body.encode(), {"Content-Type": "text/plain; charset=utf-8", **self.headers}
        return json.dumps(self.body).encode(), {"Content-Type": "application/json", **self.headers}


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


class PlatformServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[ScriptedResponse]] = defaultdict(deque)
        self._requests: list[ReceivedRequest] = []
        self.token_calls = 0
        self.token_expires_in: int | None = 3600
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="platform-server", daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def script(self, path: str, *responses: ScriptedResponse) -> None:
        """Queue the next responses for `path`, answered in order."""
        with self._lock:
            self._scripts[path].extend(responses)

    def requests(self, path: str | None = None) -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._requests.clear()
            self.token_calls = 0
            self.token_expires_in = 3600

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _respond_to(self, received: ReceivedRequest) -> ScriptedResponse:
        with self._lock:
            self._requests.append(received)
            queue = self._scripts.get(received.path)
            if queue:
                return queue.popleft()
            if received.path == TOKEN_PATH:
                self.token_calls += 1
                token: dict[str, Any] = {"access_token": f"token-{self.token_calls}", "token_type": "Bearer"}
                if self.token_expires_in is not None:
                    token["expires_in"] = self.token_expires_in
                return ScriptedResponse(body=token)
            return ScriptedResponse(body="ok")


def _handler_for(server: PlatformServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            received = ReceivedRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers=httpx.Headers(list(self.headers.items())),
                body=body,
            )
            scripted = server._respond_to(received)
            if scripted.delay:
                time.sleep(scripted.delay)
            content, headers = scripted.encoded()
            try:
                self.send_response(scripted.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (a timeout test); nobody is left to answer.
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: the tests read `requests()` instead."""

    return Handler


def closed_port_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens, for connection-refused tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture(scope="session")
def _platform_server_session() -> Iterator[PlatformServer]:
    server = PlatformServer()
    yield server
    server.close()


@pytest.fixture
def platform_server(_platform_server_session: PlatformServer) -> PlatformServer:
    _platform_server_session.reset()
    return _platform_server_session
