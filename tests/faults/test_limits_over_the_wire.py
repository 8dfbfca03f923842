"""The request limits through a real server process (uvicorn, as `external-agents serve` runs it), not only in-process.

A declared 2 MiB body is a 413 in milliseconds, a chunked body over the limit a 413, 20 kB and 100 kB of
headers a 431 (the server itself would otherwise accept them), a NUL in the query a 400, each with the JSON
error body; the connection stays usable for the next request.

Run: pytest tests/faults/test_limits_over_the_wire.py -s
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.support import report
from tests.process_servers import HEADERS, app_env, app_server

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("wire")
    env = app_env(database_url=f"sqlite:///{data_dir}/wire.db", redis_url=None, data_dir=str(data_dir))
    with app_server(env, log_dir=data_dir) as base:
        yield base


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b" " * size


@pytest.mark.parametrize(
    ("label", "request_kwargs", "status", "error_code"),
    [
        ("2 MiB body", {"method": "POST", "content": b" " * 2 * MIB}, 413, "PAYLOAD_TOO_LARGE"),
        ("2 MiB chunked body", {"method": "POST", "content": "chunked"}, 413, "PAYLOAD_TOO_LARGE"),
        ("20 kB of headers", {"method": "GET", "headers": {"X-Filler": "a" * 20_000}}, 431, "HEADERS_TOO_LARGE"),
        ("100 kB of headers", {"method": "GET", "headers": {"X-Filler": "a" * 100_000}}, 431, "HEADERS_TOO_LARGE"),
        ("NUL in the query", {"method": "GET", "params": {"search": "\x00"}}, 400, "VALIDATION_ERROR"),
    ],
)
def test_limits_hold_through_the_server(server, capsys, label, request_kwargs, status, error_code):
    kwargs = dict(request_kwargs)
    if kwargs.get("content") == "chunked":
        kwargs["content"] = chunks(2 * MIB)
    kwargs["headers"] = {**HEADERS, "Content-Type": "application/json", **kwargs.get("headers", {})}
    with httpx.Client(base_url=server, timeout=10) as http:
        started = time.perf_counter()
        response = http.request(url="/api/external-agents", **kwargs)
        elapsed = time.perf_counter() - started
        after = http.get("/api/version")
    report(capsys, [f"{label}: {response.status_code} in {elapsed * 1000:.0f} ms: {response.json()['detail']}"])
    assert response.status_code == status and response.json()["error_code"] == error_code
    assert elapsed < 2.0
    assert after.status_code == 200
