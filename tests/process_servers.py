"""Real server processes for tests: app instances, an instant platform, a Redis to stop and start, a fresh database.

Everything binds 127.0.0.1 on free ports and is stopped when its context exits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

from tests.factories import IDENTITY, TEST_FERNET_KEY, make_settings, reset_postgres_database

ROOT = Path(__file__).resolve().parent.parent
BENCH_API_KEY = "bench-admin-key-0123456789abcdefghij"
# What a client of these servers sends: the bootstrap admin key and a caller identity.
HEADERS = {"Authorization": f"Bearer {BENCH_API_KEY}", **IDENTITY}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database(url: str, data_dir: str) -> None:
    """Drop, recreate and migrate the PostgreSQL database at `url`."""
    from external_agents.models.migrate import upgrade

    reset_postgres_database(url)
    upgrade(make_settings(url, data_dir), report=lambda _line: None)


def app_env(*, database_url: str, redis_url: str | None, data_dir: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("EXTERNAL_AGENT_", "KAIZEN_", "DATABASE_", "REDIS_"))
    }
    env.update(
        {
            "DATABASE_URL": database_url,
            "DATABASE_POOL_SIZE": "20",
            "EXTERNAL_AGENT_ENCRYPTION_KEY": TEST_FERNET_KEY,
            "KAIZEN_BOOTSTRAP_API_KEY": BENCH_API_KEY,
            "KAIZEN_DATA_DIR": data_dir,
            "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS": "true",
            "EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS": "5",
            "EXTERNAL_AGENT_WEBHOOK_RETRY_ATTEMPTS": "1",
            **extra,
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server at {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not start in {timeout} s")


async def race_children(
    script: str, args: Sequence[str], *, count: int, ready_timeout: float, run_timeout: float
) -> list[tuple[int, bytes]]:
    """Run `count` Python processes of `script` at once, released together; each one's exit code and stdout.

    The script prints "ready" once connected, waits for a line on stdin, does its work and prints its result:
    every child is connected before any fires, so their requests overlap in the shared store.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert (await asyncio.wait_for(child.stdout.readline(), ready_timeout)).strip() == b"ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await asyncio.wait_for(child.communicate(), run_timeout) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    return [(child.returncode, stdout) for child, (stdout, _) in zip(children, outputs, strict=True)]


@contextmanager
def _process(command: list[str], *, env: dict[str, str], ready_url: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(ready_url, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def app_server(env: dict[str, str], *, log_dir: Path, workers: int = 1) -> Iterator[str]:
    """An `external-agents serve` process (with `workers` worker processes); yields its base URL."""
    with app_process(env, log_dir=log_dir, workers=workers) as (base, _process):
        yield base


@contextmanager
def app_process(
    env: dict[str, str], *, log_dir: Path, workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like `app_server`, also yielding the process, for a test that kills it (SIGKILL) itself."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "external_agents.channels.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    base = f"http://127.0.0.1:{port}"
    with _process(command, env=env, ready_url=f"{base}/api/health", log=log_dir / f"app-{port}.log") as process:
        yield base, process


@contextmanager
def instant_platform(*, log_dir: Path) -> Iterator[str]:
    """A platform that answers every delivery at once; `GET /count` reports deliveries per path."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.benchmarks.instant_platform:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    base = f"http://127.0.0.1:{port}"
    with _process(command, env=dict(os.environ), ready_url=f"{base}/count", log=log_dir / f"platform-{port}.log"):
        yield base


class RedisServer:
    """A redis-server of our own on a free port (no persistence), which a test may stop and start again."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = log_dir / f"redis-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self._log.open("a") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)


@contextmanager
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
