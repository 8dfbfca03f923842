"""A busy port, a database that is down or not migrated, Redis that is down: one line and exit 5, never a traceback.

Every command runs as an operator would run it, a real `external-agents` process (DATABASE_URL pointing at a
port where nothing listens, at an empty PostgreSQL database, or at an empty SQLite file), with a bounded time.
The API is checked in-process while the real PostgreSQL behind it goes away: a TCP proxy in front of it is cut,
and every route answers 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from external_agents.errors import ServiceUnavailableError
from external_agents.gateway.operations import LocalGateway, operator_caller
from external_agents.models.migrate import upgrade
from external_agents.nexus_app import build_app
from tests.factories import app_client, make_settings, new_org, register, throwaway_database
from tests.process_servers import ROOT, app_env, free_port

EXIT_UNAVAILABLE = 5
COMMAND_TIMEOUT = 60
IDENTITY_OPTIONS = ["--user-id", "u", "--user-email", "u@example.com", "--system", "s", "--session-id", "s"]
COMMANDS = {
    "serve": ["serve", "--port", "{port}"],
    "migrate --status": ["migrate", "--status"],
    "keys list": ["keys", "list"],
    "reconcile": ["reconcile"],
    "agents list": ["agents", "list", "--org", "o"],
    "agents list (key)": ["agents", "list", "--api-key", "eak_anything"],
    "invoke": ["invoke", "some-agent", "--input", '"x"', *IDENTITY_OPTIONS, "--org", "o"],
    "lineage export": ["lineage", "export", "--org", "o"],
    "mcp --stdio": ["mcp", "--stdio", "--api-key", "eak_anything"],
}


def closed_port_database() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/nothing_listens_here"


def external_agents(env: dict[str, str], args: list[str]) -> subprocess.CompletedProcess[str]:
    args = [arg.replace("{port}", str(free_port())) for arg in args]
    return subprocess.run(
        [sys.executable, "-m", "external_agents.channels.cli", *args],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *fragments: str, command: str = "") -> None:
    assert done.returncode == EXIT_UNAVAILABLE, (command, done.returncode, done.stderr[-2000:])
    # Nothing half-written on stdout (lineage export used to write "[" before failing).
    assert done.stdout == "", command
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (command, done.stderr[-2000:])
    for fragment in fragments:
        assert fragment in lines[0], (command, lines[0])


def run_all(env: dict[str, str], commands: list[str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each command in its own process, a few at a time (each spends most of its second importing)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(commands, pool.map(lambda c: external_agents(env, COMMANDS[c]), commands), strict=True))


def test_every_command_says_in_one_line_that_the_database_is_down(tmp_path: Path) -> None:
    env = app_env(database_url=closed_port_database(), redis_url=None, data_dir=str(tmp_path))
    for command, done in run_all(env, list(COMMANDS)).items():
        assert_one_line(done, "database", command=command)


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_every_command_says_in_one_line_that_the_database_is_not_migrated(
    tmp_path: Path, postgres_url: str, database: str
) -> None:
    # serve migrates the embedded SQLite file itself.
    commands = ["keys list", "agents list"] + (["lineage export", "serve"] if database == "postgres" else [])
    with throwaway_database(postgres_url, prefix="ea_unmigrated_") as empty_postgres:
        url = empty_postgres if database == "postgres" else f"sqlite:///{tmp_path}/empty.db"
        if database == "sqlite":
            (tmp_path / "empty.db").touch()
        env = app_env(database_url=url, redis_url=None, data_dir=str(tmp_path))
        finished = run_all(env, commands)
    for command, done in finished.items():
        assert_one_line(done, "not migrated", "external-agents migrate", command=command)


def test_serve_on_a_port_in_use_with_redis_exits_in_one_line(tmp_path: Path, redis_url: str) -> None:
    """It used to print "address already in use" and hang in its shutdown, ignoring SIGTERM and SIGINT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = app_env(database_url=f"sqlite:///{tmp_path}/app.db", redis_url=redis_url, data_dir=str(tmp_path))
        started = time.monotonic()
        done = external_agents(env, ["serve", "--host", "127.0.0.1", "--port", str(port)])
    assert time.monotonic() - started < 30
    assert_one_line(done, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_serve_refuses_to_start_without_redis_when_rate_limits_fail_closed(tmp_path: Path) -> None:
    env = app_env(
        database_url=f"sqlite:///{tmp_path}/app.db",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        data_dir=str(tmp_path),
        EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN="false",
        REDIS_TIMEOUT_SECONDS="1",
    )
    done = external_agents(env, COMMANDS["serve"])
    assert_one_line(done, "Redis cannot be reached", "EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN")


class CuttableProxy:
    """A TCP proxy to PostgreSQL on 127.0.0.1: `cut()` closes every connection and refuses new ones, as a
    database host that went away does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


@asynccontextmanager
async def gateway_behind_proxy(postgres_url: str, data_dir: Path) -> AsyncIterator[tuple[object, CuttableProxy]]:
    with throwaway_database(postgres_url, prefix="ea_goes_away_") as database_url:
        url = make_url(database_url)
        proxy = CuttableProxy(url.port or 5432)
        await proxy.start()
        proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
        # Migrated directly: the synchronous migration would block the event loop the proxy runs on.
        upgrade(make_settings(database_url, str(data_dir)), report=lambda _line: None)
        app = build_app(make_settings(proxied, str(data_dir)))
        async with app.fastapi_app.router.lifespan_context(app.fastapi_app):
            yield app, proxy
        await proxy.cut()


async def test_the_api_answers_503_with_retry_after_when_the_database_goes_away(
    tmp_path: Path, postgres_url: str, platform_server
) -> None:
    async with gateway_behind_proxy(postgres_url, tmp_path) as (app, proxy), app_client(app) as client:
        org = await new_org(app)
        agent = await register(client, org, platform_server)
        routes = [
            ("GET", "/api/external-agents", None),
            ("GET", f"/api/external-agents/{agent['id']}", None),
            ("GET", f"/api/external-agents/{agent['id']}/governance-status", None),
            ("GET", "/api/policies", None),
            ("GET", "/api/lineage", None),
            ("POST", "/api/workflows/greeting/execute", {"inputs": {}}),
        ]
        for method, path, body in routes:
            assert (await client.request(method, path, json=body, headers=org.headers)).status_code == 200, path

        await proxy.cut()

        for method, path, body in routes:
            response = await client.request(method, path, json=body, headers=org.headers)
            if path.startswith("/api/workflows/greeting"):
                # This workflow never touches the database: it goes on working (the key is checked first, though).
                assert response.status_code in (200, 503), response.text
                continue
            assert response.status_code == 503, (path, response.text)
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
            assert "Traceback" not in response.text


async def test_a_gateway_operation_answers_503_when_the_database_goes_away_after_authentication(
    tmp_path: Path, postgres_url: str, platform_server
) -> None:
    """LocalGateway._run turned every workflow failure into a 500, an unreachable database included."""
    async with gateway_behind_proxy(postgres_url, tmp_path) as (app, proxy):
        gateway = LocalGateway(app.external_agents, operator_caller("org-gone"))
        assert (await gateway.list_agents())["items"] == []
        await proxy.cut()
        with pytest.raises(ServiceUnavailableError) as refused:
            await gateway.list_agents()
    assert refused.value.status_code == 503 and refused.value.retry_after_seconds == 1
    assert "database" in refused.value.detail


async def test_an_unmigrated_database_is_a_503_never_a_500(tmp_path: Path, platform_server) -> None:
    app = build_app(make_settings(f"sqlite:///{tmp_path}/unmigrated.db", str(tmp_path)))
    async with app.fastapi_app.router.lifespan_context(app.fastapi_app), app_client(app) as client:
        response = await client.get("/api/external-agents", headers={"Authorization": "Bearer eak_anything"})
        health = await client.get("/api/health")
    assert response.status_code == 503, response.text
    assert health.status_code in (200, 503)
