"""Each way a platform can fail below HTTP, from a real local server, and the delivery failure it becomes.

The HTTP client is aiohttp; these failures were httpx's before, and each must still come out as it did: the
same retryable and reached-platform flags (a 502, 503 or 504, and a reservation settled or released), a
timeout still a timeout, and the error text still naming the failure as httpx did (ConnectError,
RemoteProtocolError, ...), since lineage rows and operators read it. The expectations were checked against the
httpx client on the same servers before it was replaced.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from external_agents.errors import PlatformError, PlatformTimeoutError
from external_agents.nodes.platforms.auth import OAuth2TokenCache
from external_agents.nodes.platforms.base import DeliveryOptions
from external_agents.nodes.platforms.delivery import deliver
from external_agents.nodes.platforms.http_client import PlatformClient
from tests.integration.test_platform_delivery import make_request
from tests.platform_server import PlatformServer, ScriptedResponse

TIMEOUT = 0.3
OPTIONS = DeliveryOptions(
    timeout_seconds=TIMEOUT,
    retry_attempts=1,
    allow_private_webhooks=True,
    allowed_webhook_domains=(),
    backoff_base_seconds=0.01,
)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    await reader.readexactly(length)


def reset(writer: asyncio.StreamWriter) -> None:
    # Linger 0: closing sends RST instead of FIN, as a crashing peer would.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> None:
    await read_request(reader)
    writer.write(raw)
    await writer.drain()
    writer.close()


async def close_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.close()


async def reset_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    reset(writer)


async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await answer_then_close(reader, writer, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await answer_then_close(reader, writer, b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok":')


async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok":')
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


def head_with_header_of(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nX-Filler: " + b"x" * size + b"\r\nContent-Length: 0\r\n\r\n"


async def huge_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Over the 100 KiB httpcore allowed a response head.
    await answer_then_close(reader, writer, head_with_header_of(200 * 1024))


async def stall_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(10 * TIMEOUT)
    writer.close()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # A byte each 0.1 s never trips the per-read timeout; the whole exchange is bounded all the same.
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(100):
        await asyncio.sleep(TIMEOUT / 3)
        writer.write(b"x")
        await writer.drain()
    writer.close()


async def plain_text_to_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # The client starts a TLS handshake; a server that answers in plain HTTP fails it before a request is sent.
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@dataclass(frozen=True)
class Case:
    handler: Handler
    name: str
    reached: bool
    timed_out: bool = False
    scheme: str = "http"


CASES = {
    "closed-without-answer": Case(close_without_answer, "RemoteProtocolError", reached=True),
    "reset-after-request": Case(reset_after_request, "ReadError", reached=True),
    "not-http": Case(not_http, "RemoteProtocolError", reached=True),
    "body-shorter-than-its-length": Case(short_body, "RemoteProtocolError", reached=True),
    # httpx called this one a ReadError; aiohttp reports a cut body the same whether the peer closed or reset
    # (ClientPayloadError), so it is named as the cut body. Same flags either way.
    "reset-mid-body": Case(reset_mid_body, "RemoteProtocolError", reached=True),
    "header-larger-than-100-kib": Case(huge_header, "RemoteProtocolError", reached=True),
    "stalled-after-the-head": Case(stall_after_head, "", reached=True, timed_out=True),
    "trickling-body": Case(trickle, "", reached=True, timed_out=True),
    "tls-handshake-fails": Case(plain_text_to_tls, "ConnectError", reached=False, scheme="https"),
}


@pytest.fixture
async def client() -> AsyncIterator[PlatformClient]:
    http_client = PlatformClient(max_connections=10)
    yield http_client
    await http_client.aclose()


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    connections = [0]

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    server.connections = connections  # type: ignore[attr-defined]
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
async def test_a_transport_failure_keeps_its_flags_and_its_name(client: PlatformClient, case: Case) -> None:
    server, port = await serve(case.handler)
    request = make_request("custom_http", {"url": f"{case.scheme}://127.0.0.1:{port}/agent"})
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(PlatformError) as caught:
            await deliver(request, adapter=_adapter(), client=client, options=OPTIONS, token_cache=OAuth2TokenCache())
    finally:
        server.close()
    elapsed = asyncio.get_running_loop().time() - started

    error = caught.value
    assert isinstance(error, PlatformTimeoutError) is case.timed_out
    assert error.retryable
    assert error.reached_platform is case.reached
    assert error.attempts == 1 + OPTIONS.retry_attempts
    assert server.connections[0] == error.attempts  # type: ignore[attr-defined]
    if case.timed_out:
        assert f"did not answer within {TIMEOUT:g} seconds (127.0.0.1)" in error.detail
        assert elapsed < error.attempts * (TIMEOUT + 0.5)
    else:
        assert f"custom_http delivery to 127.0.0.1 failed: {case.name}: " in error.detail
    assert error.detail.endswith("(after 2 attempts)")


async def test_a_long_header_that_httpx_accepted_is_accepted(client: PlatformClient) -> None:
    async def long_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_then_close(reader, writer, head_with_header_of(64 * 1024))

    server, port = await serve(long_header)
    try:
        result = await deliver(
            make_request("custom_http", {"url": f"http://127.0.0.1:{port}/agent"}),
            adapter=_adapter(),
            client=client,
            options=OPTIONS,
            token_cache=OAuth2TokenCache(),
        )
    finally:
        server.close()

    assert (result.status_code, result.output, result.attempts) == (200, None, 1)


async def test_waiting_for_a_pooled_connection_is_bounded_by_the_timeout() -> None:
    # One connection, held by a delivery the platform has not answered yet: the next waits for it until the
    # delivery timeout, and nothing of it is sent. The whole-exchange bound fires first (armed first, same
    # length), so it counts as possibly reached, as it did with httpx's PoolTimeout racing the same bound.
    holding = asyncio.Event()
    release = asyncio.Event()

    async def answer_when_released(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        holding.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await serve(answer_when_released)
    client = PlatformClient(max_connections=1)
    patient = DeliveryOptions(
        timeout_seconds=100 * TIMEOUT, retry_attempts=0, allow_private_webhooks=True, allowed_webhook_domains=()
    )
    impatient = DeliveryOptions(
        timeout_seconds=TIMEOUT, retry_attempts=0, allow_private_webhooks=True, allowed_webhook_domains=()
    )
    url = f"http://127.0.0.1:{port}/agent"
    try:
        held = asyncio.create_task(
            deliver(
                make_request("custom_http", {"url": url}),
                adapter=_adapter(),
                client=client,
                options=patient,
                token_cache=OAuth2TokenCache(),
            )
        )
        await holding.wait()
        with pytest.raises(PlatformTimeoutError) as caught:
            await deliver(
                make_request("custom_http", {"url": url}),
                adapter=_adapter(),
                client=client,
                options=impatient,
                token_cache=OAuth2TokenCache(),
            )
        release.set()
        assert (await held).status_code == 200
    finally:
        release.set()
        server.close()
        await client.aclose()

    assert caught.value.reached_platform
    assert caught.value.retryable
    assert server.connections[0] == 1  # type: ignore[attr-defined]


async def test_a_body_that_does_not_decode_is_a_retryable_failure_of_a_reached_platform(
    platform_server: PlatformServer, client: PlatformClient
) -> None:
    platform_server.script(
        "/gzip", *[ScriptedResponse(headers={"Content-Encoding": "gzip"}, body=b"not gzip at all")] * 2
    )

    with pytest.raises(PlatformError) as caught:
        await deliver(
            make_request("custom_http", {"url": platform_server.url("/gzip")}),
            adapter=_adapter(),
            client=client,
            options=OPTIONS,
            token_cache=OAuth2TokenCache(),
        )

    assert caught.value.reached_platform and caught.value.retryable
    assert "custom_http delivery to 127.0.0.1 failed: RemoteProtocolError: " in caught.value.detail
    assert len(platform_server.requests("/gzip")) == 2


def _adapter():
    from external_agents.nodes.platforms import get_adapter

    return get_adapter("custom_http")


async def test_the_client_opens_again_after_it_was_closed(platform_server: PlatformServer) -> None:
    # The app closes its client at shutdown; a host that starts it again (a test client's lifespan) delivers.
    client = PlatformClient(max_connections=10)
    platform_server.script("/again", ScriptedResponse(body="one"), ScriptedResponse(body="two"))
    outputs = []
    for _ in range(2):
        result = await deliver(
            make_request("custom_http", {"url": platform_server.url("/again")}),
            adapter=_adapter(),
            client=client,
            options=OPTIONS,
            token_cache=OAuth2TokenCache(),
        )
        outputs.append(result.output)
        await client.aclose()

    assert outputs == ["one", "two"]
