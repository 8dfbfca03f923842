"""What the fault and scale-out suites share: a private PostgreSQL cluster they may stop and start, a
round-robin client over app instances, database checks, and a scan of server logs for secrets. (The Redis
they stop and start is tests/process_servers.py's, which the integration suite uses too.)

Everything binds 127.0.0.1 and is stopped (and its files removed) when its context exits. The main PostgreSQL
and Redis of the machine are never stopped: these suites start their own where they need to break one.
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import TEST_FERNET_KEY
from tests.process_servers import BENCH_API_KEY, HEADERS, free_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
# What no server log may contain, whatever happened.
SECRETS = (BENCH_API_KEY, TEST_FERNET_KEY)


def report(capsys: pytest.CaptureFixture[str], lines: Sequence[str]) -> None:
    with capsys.disabled():
        print()
        for line in lines:
            print(f"    {line}")


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def summary_ms(samples_seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in samples_seconds]
    if not ms:
        return "no samples"
    return (
        f"p50 {statistics.median(ms):.1f} ms  p95 {percentile(ms, 0.95):.1f} ms  "
        f"p99 {percentile(ms, 0.99):.1f} ms  max {max(ms):.1f} ms"
    )


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and the server refuse to run as root; the cluster belongs to the postgres user then.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb in a temporary directory) that a test may stop and start."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ea-private-pg-"))
        self.data = self.root / "data"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w"]
        subprocess.run(
            _as_postgres_user([*command, "-m", "fast", "-o", options, action]), check=True, capture_output=True
        )

    def init(self) -> None:
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True)
        self.start()

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
        yield server
    finally:
        server.destroy()


class RoundRobin:
    """An HTTP client that sends each request to the next app instance in turn, as a simple load balancer."""

    def __init__(self, bases: Sequence[str], *, connections: int = 100, timeout: float = 60.0) -> None:
        self.bases = list(bases)
        self._next = itertools.cycle(self.bases)
        # The server closes a connection idle for 5 s (uvicorn's keep-alive timeout); a loaded client that reused
        # one at that moment would see the close as a failed request. Idle connections are let go well before.
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0)
        self.http = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, next(self._next) + path, **kwargs)

    async def aclose(self) -> None:
        await self.http.aclose()


def secrets_in_logs(log_dir: Path, secrets: Sequence[str]) -> dict[str, list[str]]:
    """Which secrets appear in which server log of `log_dir`."""
    found: dict[str, list[str]] = {}
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        hits = [f"secret #{n}" for n, value in enumerate(secrets) if value in text]
        if hits:
            found[log.name] = hits
    return found


async def register(client: RoundRobin, platform: str, path: str, **fields: Any) -> str:
    body = {
        "name": f"fault-{path.strip('/')}-{time.monotonic_ns()}",
        "platform": "custom_http",
        "platform_config": {"url": f"{platform}{path}"},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "fault-platform-token"}},
        **fields,
    }
    response = await client.request("POST", "/api/external-agents", json=body, headers=HEADERS)
    assert response.status_code == 201, response.text
    return response.json()["id"]
