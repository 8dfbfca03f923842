"""The one HTTP client for everything sent to platforms: deliveries, OAuth2 token requests, budget alerts.

An aiohttp session rather than httpx: measured on a loopback platform, an httpx POST costs about 0.8 ms of
CPU (httpcore, anyio and sniffio on every read and write, two writes per request) against about 0.2 ms for
aiohttp, whose HTTP parser is compiled. The session keeps what the httpx client did that a platform can tell:
the same trust store (httpx's own SSL context: certifi, or SSL_CERT_FILE/SSL_CERT_DIR), no redirects followed
(each request says so), no Content-Type added to a body that has none, and response heads as large as httpcore accepted.
It keeps no cookies: a cookie one agent's platform set must not be sent on behalf of another agent on that host.
Proxies and netrc from the environment are not used (trust_env=False), so nothing adds an Authorization header.

The session belongs to an event loop, and the state is built before the loop runs, so it is opened on first
use (and again after `aclose`, or in another loop: a test client's lifespan runs each in a loop of its own).
"""

from __future__ import annotations

import asyncio
import ssl
from functools import lru_cache

import aiohttp
import httpx

# The client decoded the body already; a response rebuilt from it must not decode or frame it again.
_DECODED_HEADERS = frozenset({b"content-encoding", b"content-length", b"transfer-encoding"})
# The largest response head httpcore accepted (its h11 max_incomplete_event_size); aiohttp's own default
# refuses a header line over 8 KiB, which a platform's long cookie or CSP header can exceed.
MAX_HEADER_BYTES = 100 * 1024
MAX_HEADERS = 1000


class PlatformClient:
    """A lazily opened aiohttp session with a bounded connection pool; `aclose` at shutdown."""

    def __init__(self, *, max_connections: int) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                ssl=self._ssl,
                # Resolved on each new connection as httpx did; the URL policy resolves on each attempt anyway.
                use_dns_cache=False,
                # httpx's keep-alive expiry: a platform's idle connection is not reused after its server dropped it.
                keepalive_timeout=5,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Content-Type",),
                trust_env=False,
                max_line_size=MAX_HEADER_BYTES,
                max_field_size=MAX_HEADER_BYTES,
                max_headers=MAX_HEADERS,
            )
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None
        self._loop = None


@lru_cache(maxsize=64)
def request_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """httpx's per-operation timeout: connecting (including the wait for a pooled connection) and each read.
    The whole exchange is bounded by the caller (asyncio.timeout), as with httpx."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


def buffered_response(response: aiohttp.ClientResponse, body: bytes) -> httpx.Response:
    """The answer as the adapters read it (an httpx.Response: headers, text, json), from its decoded body."""
    headers = [(name, value) for name, value in response.raw_headers if name.lower() not in _DECODED_HEADERS]
    return httpx.Response(response.status, headers=headers, content=body)


def failure_name(exc: BaseException) -> tuple[str, bool]:
    """A transport failure's name, and whether the request certainly never left (nothing was sent).

    The names are those the httpx client gave the same failures, which error texts, lineage rows and the
    operators reading them have always carried: a refused connection is a ConnectError whatever the client.
    """
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return "UnsupportedProtocol", True
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # Waiting for a pooled connection or connecting: nothing was sent.
        return "ConnectTimeout", True
    if isinstance(exc, TimeoutError):
        return "ReadTimeout", False
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused, unreachable, DNS, a TLS handshake or certificate failure: before any byte of the request.
        return "ConnectError", True
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return "WriteError", False
    if isinstance(exc, aiohttp.ClientOSError):
        # Reset by the peer after the connection was made.
        return "ReadError", False
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        # Closed before answering, a body shorter than its length, an answer that is not HTTP.
        return "RemoteProtocolError", False
    return "NetworkError", False


def failure_reason(exc: BaseException) -> str:
    """What went wrong, in words that never hold the request URL (some aiohttp errors quote it)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error)
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message
    if isinstance(exc, aiohttp.InvalidURL):
        return ""
    return str(exc)
