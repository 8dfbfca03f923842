"""Embedding: a host Kailash app adds External Agents with one `install` call, as the migration guide asks.

The main test does what a host's operator does, with nothing of this checkout on the path: build the wheel,
install it into a fresh virtualenv (dependencies from the package index), migrate the host's existing database
(its billing_usage rows kept), start the host (tests/host_app: its own `nodes`, `errors`, `models`) as a real
server, and pass the guide's smoke tests 1-5 against it; the host's own workflow answers on Nexus's route
exactly as before the feature was added. The other tests check what `install` refuses, in-process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.factories import TEST_FERNET_KEY, make_settings, throwaway_database
from tests.host_app.existing_database import sync_url
from tests.platform_server import PlatformServer
from tests.process_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
HOST_APP = ROOT / "tests" / "host_app"
# What the wheel used to install at top level, each a name a host app may well have of its own.
FORMER_TOP_LEVEL = (
    "settings",
    "errors",
    "money",
    "app_state",
    "request_models",
    "credential_cipher",
    "nexus_app",
    "models",
    "nodes",
    "stores",
    "workflows",
    "channels",
)
GREETING_INPUTS = {"inputs": {"greet": {"salutation": "Hi"}}}
IDENTITY = {
    "X-External-User-ID": "test@example.com",
    "X-External-User-Email": "test@example.com",
    "X-External-System": "test",
    "X-External-Session-ID": "test-session-123",
}


@dataclass(frozen=True)
class FreshInstall:
    wheel: Path
    python: Path
    cli: Path
    seconds: float


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory: pytest.TempPathFactory) -> FreshInstall:
    """The wheel, built from a copy of the sources (the checkout gets no build/), installed in a new virtualenv."""
    started = time.perf_counter()
    work = tmp_path_factory.mktemp("embedding")
    source = work / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "tests", "build", "dist", "*.egg-info", "__pycache__", ".*"),
    )
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(work / "wheels")])
    [wheel] = (work / "wheels").glob("external_agents-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=600)
    return FreshInstall(
        wheel=wheel,
        python=venv / "bin" / "python",
        cli=venv / "bin" / "external-agents",
        seconds=time.perf_counter() - started,
    )


def test_the_wheel_installs_external_agents_alone(fresh_install: FreshInstall, tmp_path: Path) -> None:
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(fresh_install.wheel).namelist()}
    assert top_level == {"external_agents", "external_agents-0.1.0.dist-info"}
    # Run from an empty folder, so only what the virtualenv installed can be imported.
    probe = (
        "import importlib.util, external_agents.settings, external_agents.nodes;"
        f"print([n for n in {FORMER_TOP_LEVEL!r} if importlib.util.find_spec(n) is not None])"
    )
    assert _run([str(fresh_install.python), "-c", probe], cwd=tmp_path).stdout.strip() == "[]"
    refused = subprocess.run(
        [str(fresh_install.python), "-c", "import settings"], cwd=tmp_path, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "No module named 'settings'" in refused.stderr


@pytest.fixture(params=["sqlite", "postgres"])
def host_database(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[str]:
    """An empty database for the host: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/host.db"
        return
    with throwaway_database(postgres_url, prefix="ea_embedding_") as url:
        yield url


def test_a_host_app_embeds_the_feature_and_its_workflow_answers_as_before(
    fresh_install: FreshInstall, platform_server: PlatformServer, host_database: str, tmp_path: Path
) -> None:
    _run([str(fresh_install.python), str(HOST_APP / "existing_database.py"), host_database])
    env = _host_env(database_url=host_database, data_dir=tmp_path)
    billing = "SELECT id, organization_id, usage_type, quantity, cost_usd, created_at FROM billing_usage ORDER BY id"
    billing_before = _rows(host_database, billing)

    with _host(fresh_install, env, log=tmp_path / "before.log", with_external_agents=False) as host:
        before = _host_requests(host)
        assert host.get("/api/health").status_code == 404  # the feature is not there yet

    migrated = _run([str(fresh_install.cli), "migrate"], env=env).stdout
    assert "✅ Extending table: billing_usage (adding external_agent_id column)" in migrated
    assert "✅ Migration completed successfully" in migrated
    assert _rows(host_database, billing) == billing_before
    key_lines = _run([str(fresh_install.cli), "keys", "create", "--org", "host-org", "--name", "smoke"], env=env)
    api_key = key_lines.stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {api_key}"}

    with _host(fresh_install, env, log=tmp_path / "after.log", with_external_agents=True) as host:
        # "Existing workflows still work": Nexus's own route, still without a key, answers as before.
        assert _host_requests(host) == before

        health = host.get("/api/health")
        assert health.status_code == 200 and health.json()["services"]["external_agents"] == "enabled"
        # Smoke test 1: create an agent.
        teams = host.post(
            "/api/external-agents",
            headers=auth,
            json={
                "name": "Test Agent",
                "platform": "teams",
                "platform_config": {"webhook_url": "https://example.com/webhook"},
                "auth_config": {"auth_type": "none", "credentials": {}},
                "max_monthly_cost": 100.0,
            },
        )
        assert teams.status_code == 201, teams.text
        # Smoke test 2: list agents.
        listed = host.get("/api/external-agents", headers=auth)
        assert listed.status_code == 200 and [a["id"] for a in listed.json()["items"]] == [teams.json()["id"]]
        # Smoke test 3: governance status.
        status = host.get(f"/api/external-agents/{teams.json()['id']}/governance-status", headers=auth)
        assert status.status_code == 200 and {"budget", "rate_limit"} <= set(status.json())
        # Smoke test 4: invoke (a custom_http agent on the local platform server), then its lineage record.
        agent = host.post(
            "/api/external-agents",
            headers=auth,
            json={
                "name": "Local Agent",
                "platform": "custom_http",
                "platform_config": {"url": platform_server.url("/embedded-agent")},
                "auth_config": {"auth_type": "none", "credentials": {}},
            },
        ).json()
        invoked = host.post(
            f"/api/external-agents/{agent['id']}/invoke", headers={**auth, **IDENTITY}, json={"input": "test"}
        )
        assert invoked.status_code == 200, invoked.text
        assert [r.method for r in platform_server.requests("/embedded-agent")] == ["POST"]
        [lineage] = _rows(
            host_database,
            "SELECT id, external_agent_id FROM invocation_lineage WHERE external_user_email = 'test@example.com'",
        )
        assert lineage == (invoked.json()["invocation_id"], agent["id"])
        # Smoke test 5: the existing workflow through the feature's route, with its outputs as Nexus gives them.
        executed = host.post("/api/workflows/greeting/execute", headers=auth, json=GREETING_INPUTS)
        assert executed.status_code == 200
        assert executed.json()["outputs"] == before["workflow"]["body"]["outputs"]

        # Our routes need the key; the host's do not (above), and MCP and our metrics are served too.
        assert host.get("/api/external-agents").status_code == 401
        assert host.get("/metrics").status_code == 401
        metrics = host.get("/metrics", headers=auth)
        assert metrics.status_code == 200 and 'external_agent_invocations_total{status="success"} 1.0' in metrics.text
        tools = host.post(
            "/mcp",
            headers={**auth, "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        )
        assert tools.status_code == 200 and "invoke_agent" in {t["name"] for t in tools.json()["result"]["tools"]}
    assert len(_rows(host_database, "SELECT id FROM billing_usage")) == len(billing_before) + 1


def _host_requests(host: httpx.Client) -> dict[str, Any]:
    """What the host's own routes answer, with what differs between two runs of Nexus blanked."""
    workflow = host.post("/workflows/greeting/execute", json=GREETING_INPUTS)
    body = workflow.json()
    uuid.UUID(body.pop("workflow_id"))  # a new id each time Nexus builds the app
    assert isinstance(body.pop("execution_time"), float)
    malformed = host.post("/workflows/greeting/execute", content=b"{not json", headers={"Content-Type": "text/json"})
    unknown = host.get("/no-such-route")
    return {
        "workflow": {"status": workflow.status_code, "type": workflow.headers["content-type"], "body": body},
        "malformed": (malformed.status_code, malformed.text),
        "unknown": (unknown.status_code, unknown.text),
    }


def _host_env(*, database_url: str, data_dir: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("EXTERNAL_AGENT_", "KAIZEN_", "DATABASE_", "REDIS_", "PYTHON"))
    }
    return {
        **env,
        "DATABASE_URL": database_url,
        "EXTERNAL_AGENT_ENCRYPTION_KEY": TEST_FERNET_KEY,
        "KAIZEN_DATA_DIR": str(data_dir),
        "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS": "true",
        "EXTERNAL_AGENT_WEBHOOK_RETRY_ATTEMPTS": "1",
    }


@contextmanager
def _host(
    install: FreshInstall, env: dict[str, str], *, log: Path, with_external_agents: bool
) -> Iterator[httpx.Client]:
    """tests/host_app/app.py served by the fresh virtualenv's Python, from its own folder (first on sys.path)."""
    port = free_port()
    command = [str(install.python), "app.py", str(port)]
    if with_external_agents:
        command.append("--with-external-agents")
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=HOST_APP, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                _wait_until_up(client, process, log)
                yield client
        finally:
            process.terminate()
            process.wait(timeout=20)


def _wait_until_up(client: httpx.Client, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the host app exited with {process.returncode}:\n{log.read_text()}")
        try:
            client.get("/health")  # Nexus's own liveness route
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the host app did not start:\n{log.read_text()}")


def _rows(database_url: str, query: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(sa.text(query))]
    finally:
        engine.dispose()


def _run(
    command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_readme_embedding_example_is_the_host_apps_code() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Embedding in an existing Kailash app") :]
    example = section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]
    host_lines = {line.strip() for line in (HOST_APP / "app.py").read_text().splitlines()}
    example_lines = [line.strip() for line in example.splitlines() if line.strip()]
    assert len(example_lines) <= 10
    assert [line for line in example_lines if line not in host_lines] == []


# What install() refuses, in-process (no server, no virtualenv).


def _host_nexus() -> Any:
    from nexus import Nexus

    return Nexus(auto_discovery=False, enable_durability=False)


def test_install_twice_is_refused(tmp_path: Path) -> None:
    from external_agents import InstallError, install

    app = _host_nexus()
    settings = make_settings(f"sqlite:///{tmp_path}/twice.db", str(tmp_path))
    install(app, settings)
    routes = list(app.fastapi_app.router.routes)
    with pytest.raises(InstallError, match="already installed"):
        install(app, settings)
    assert app.fastapi_app.router.routes == routes


def test_a_host_route_on_one_of_our_paths_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    from external_agents import InstallError, install

    app = _host_nexus()

    @app.fastapi_app.get("/api/external-agents/{id}")
    def host_agents(id: str) -> dict[str, str]:
        return {"id": id}

    routes = list(app.fastapi_app.router.routes)
    settings = make_settings(f"sqlite:///{tmp_path}/conflict.db", str(tmp_path))
    with pytest.raises(InstallError, match=r"already serves /api/external-agents/\{id\}"):
        install(app, settings)
    assert app.fastapi_app.router.routes == routes
    assert getattr(app.fastapi_app.state, "external_agents", None) is None


def test_a_host_health_route_is_kept_and_ours_is_not_mounted(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from external_agents import install

    app = _host_nexus()

    @app.fastapi_app.get("/api/health")
    def host_health() -> dict[str, str]:
        return {"host": "ok"}

    install(app, make_settings(f"sqlite:///{tmp_path}/health.db", str(tmp_path)))
    with TestClient(app.fastapi_app) as client:
        assert client.get("/api/health").json() == {"host": "ok"}
        assert client.get("/api/version").json()["name"] == "external-agents"


def test_install_on_an_app_already_serving_is_refused(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from external_agents import InstallError, install

    app = _host_nexus()
    with TestClient(app.fastapi_app) as client:
        assert client.get("/health").status_code == 200
        with pytest.raises(InstallError, match="already serving"):
            install(app, make_settings(f"sqlite:///{tmp_path}/late.db", str(tmp_path)))


def test_our_lifespan_runs_inside_the_hosts(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from external_agents import install

    app = _host_nexus()
    events: list[str] = []
    nexus_lifespan = app.fastapi_app.router.lifespan_context

    @asynccontextmanager
    async def host_lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        events.append(f"host starts; ours has {len(state.background)} tasks")
        async with nexus_lifespan(asgi_app) as nexus_state:
            yield nexus_state
        events.append(f"host stops; ours has {sum(not task.done() for task in state.background)} running")

    app.fastapi_app.router.lifespan_context = host_lifespan
    state = install(app, make_settings(f"sqlite:///{tmp_path}/lifespan.db", str(tmp_path)))
    with TestClient(app.fastapi_app):
        events.append(f"serving; ours has {len(state.background)} tasks")
    assert events == ["host starts; ours has 0 tasks", "serving; ours has 5 tasks", "host stops; ours has 0 running"]


def test_the_package_root_loads_nothing_heavy_until_install_is_used() -> None:
    probe = "import sys, external_agents; print(sorted({'nexus', 'kailash', 'fastapi'} & set(sys.modules)))"
    done = _run([sys.executable, "-c", probe], cwd=ROOT)
    assert done.stdout.strip() == "[]"
