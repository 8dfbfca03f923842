"""Issue 12's load benchmark: an invocation measured next to its baselines, in one run, from the processes' own
CPU counters; and issue 3's governance decision and exactness across two app processes.

The load (wrk, Debian's package, installed when missing; 32 connections, one thread, LOAD_SECONDS each) drives
one app process (one worker) on PostgreSQL and a Redis of its own, with a platform that answers at once:
- the read baseline, an authenticated `GET /api/external-agents/{id}` (auth, one SQL read, a JSON answer);
- `POST /api/external-agents/{id}/invoke` of an agent whose limits are never reached;
- a direct POST to the platform, the delivery hop's own cost;
- the same invoke on a server with `--workers 2`.
CPU per request comes from /proc/<pid>/stat (utime + stime) before and after each run, for the app process and
its children, PostgreSQL (the backends of this benchmark's database, plus the server-wide checkpointer, background
and WAL writers), redis-server, the platform, and wrk itself. Sequential p50s (one connection, interleaved, the
lean client) give invoke, read and platform direct. Every load run is reconciled: platform deliveries = lineage
rows = billing rows for its agent, and every response 2xx.

Targets (issue 12), asserted as ratios to the baselines of the same run, never as milliseconds: CPU per
invocation <= 1.5x the read's; invoke throughput >= 0.6x the read's (one worker, 32 connections); sequential
invoke p50 <= 1.6x the read's plus the platform direct p50; two workers >= 1.7x one worker.

Run: pytest tests/benchmarks/test_invocation_performance.py -v
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.benchmarks.lean_http_client import LeanConnection
from tests.factories import UNLIMITED, throwaway_database
from tests.process_servers import (
    HEADERS,
    app_env,
    app_process,
    app_server,
    fresh_database,
    instant_platform,
    redis_server,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CONNECTIONS = 32
LOAD_SECONDS = 12
WARM_UP_SECONDS = 3
SEQUENTIAL_ROUNDS = 500
# The pool is smaller than the default 20: PostgreSQL's 100 connections are shared by everyone on this machine,
# and with 32 connections in flight a worker keeps only a few statements open at a time.
POOL_SIZE = "10"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# PostgreSQL's own processes that write for every database (this benchmark's WAL and checkpoints among them).
POSTGRES_SHARED = ("checkpointer", "background writer", "walwriter")

CPU_RATIO_TARGET = 1.5
THROUGHPUT_RATIO_TARGET = 0.6
SEQUENTIAL_READ_FACTOR = 1.6
TWO_WORKERS_TARGET = 1.7


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(capsys: pytest.CaptureFixture[str], lines: list[str]) -> None:
    with capsys.disabled():
        print()
        for line in lines:
            print(f"    {line}")


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing (refreshing the package lists if need be)."""
    if shutil.which("wrk") is None:
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
            subprocess.run(install, capture_output=True, check=True)
    path = shutil.which("wrk")
    assert path, "wrk is not installed and apt-get could not install it"
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str):
    """A throwaway PostgreSQL database, a redis-server of its own, the instant platform and one app process."""
    data_dir = tmp_path_factory.mktemp("bench")
    with (
        throwaway_database(postgres_url, prefix="ea_bench_invoke_") as database_url,
        redis_server(data_dir) as redis_service,
    ):
        fresh_database(database_url, str(data_dir))
        env = app_env(
            database_url=database_url, redis_url=redis_service.url, data_dir=str(data_dir), DATABASE_POOL_SIZE=POOL_SIZE
        )
        with instant_platform(log_dir=data_dir) as platform, app_process(env, log_dir=data_dir) as (app, process):
            yield {
                "app": app,
                "app_pid": process.pid,
                "platform": platform,
                "env": env,
                "data_dir": data_dir,
                "database_url": database_url,
                "redis_url": redis_service.url,
            }


def sync_engine(database_url: str) -> sa.Engine:
    return sa.create_engine(make_url(database_url).set(drivername="postgresql+psycopg2"))


def register_sync(app: str, platform: str, path: str, **limits: object) -> str:
    body = {
        "name": f"bench-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": f"{platform}{path}"},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "bench-token"}},
        **limits,
    }
    response = httpx.post(f"{app}/api/external-agents", json=body, headers=HEADERS, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def register(http: httpx.AsyncClient, platform: str, path: str, **limits: object) -> str:
    body = {
        "name": f"bench-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": f"{platform}{path}"},
        "auth_config": {"auth_type": "bearer_token", "credentials": {"token": "bench-token"}},
        **limits,
    }
    response = await http.post("/api/external-agents", json=body, headers=HEADERS)
    assert response.status_code == 201, response.text
    return response.json()["id"]


# --- CPU from the processes' own counters ---------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    ppid: int
    ticks: int  # utime + stime
    cmdline: str


def processes() -> dict[int, Process]:
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ... utime, stime
        table[int(entry.name)] = Process(int(fields[1]), int(fields[11]) + int(fields[12]), cmdline.strip())
    return table


def descendants(table: dict[int, Process], root: int) -> set[int]:
    found = {root}
    while grown := {pid for pid, process in table.items() if process.ppid in found} - found:
        found |= grown
    return found


@dataclass(frozen=True)
class Watched:
    """The processes whose CPU a load run reports, found again at the end of each run (pools open backends)."""

    app_pid: int
    database: str
    redis_pid: int
    platform_port: int

    def groups(self, table: dict[int, Process]) -> dict[str, set[int]]:
        def postgres(process: Process) -> bool:
            title = process.cmdline.split()
            return process.cmdline.startswith("postgres:") and (
                self.database in title or any(name in process.cmdline for name in POSTGRES_SHARED)
            )

        def platform(process: Process) -> bool:
            args = process.cmdline.split()
            return "tests.benchmarks.instant_platform:app" in args and str(self.platform_port) in args

        return {
            "app": descendants(table, self.app_pid),
            "postgres": {pid for pid, process in table.items() if postgres(process)},
            "redis": {self.redis_pid},
            "platform": {pid for pid, process in table.items() if platform(process)},
        }


def cpu_seconds_by_group(watched: Watched, before: dict[int, Process], after: dict[int, Process]) -> dict[str, float]:
    spent = {}
    for name, pids in watched.groups(after).items():
        ticks = sum(after[pid].ticks - (before[pid].ticks if pid in before else 0) for pid in pids if pid in after)
        spent[name] = ticks / CLOCK_TICKS
    return spent


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- wrk ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadRun:
    label: str
    requests: int
    rate: float
    non_2xx: int
    socket_errors: str
    cpu_ms: dict[str, float]  # per request, by process group, and "wrk"


def wrk_script(directory: Path, method: str, headers: dict[str, str], body: object | None) -> Path:
    # JSON string literals are valid Lua string literals for the ASCII text used here.
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()]
    script = directory / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(
    wrk: str, url: str, script: Path, *, seconds: int, connections: int, label: str, watched: Watched
) -> LoadRun:
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    before, wrk_before = processes(), children_cpu_seconds()
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    after, wrk_after = processes(), children_cpu_seconds()
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)", output)
    spent = {**cpu_seconds_by_group(watched, before, after), "wrk": wrk_after - wrk_before}
    return LoadRun(
        label=label,
        requests=requests,
        rate=rate,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors.group(1).strip() if socket_errors else "",
        cpu_ms={name: seconds_spent * 1000 / max(requests, 1) for name, seconds_spent in spent.items()},
    )


# --- reconciling a run: platform deliveries = lineage rows = billing rows ---------------------------------------


@dataclass(frozen=True)
class Reconciled:
    label: str
    answered: int  # 2xx responses the client saw complete
    delivered: int
    lineage: int
    billed: int
    pending: int

    @property
    def holds(self) -> bool:
        # wrk stops with up to CONNECTIONS requests in flight, which the server still completes and records.
        return (
            self.delivered == self.lineage == self.billed
            and self.pending == 0
            and self.answered <= self.lineage <= self.answered + CONNECTIONS
        )


def reconcile(
    connection: sa.Connection, platform: str, *, label: str, agent_id: str, path: str, answered: int
) -> Reconciled:
    """Counts for one agent once its in-flight requests have settled (polled, up to 30 s)."""
    query = sa.text(
        "SELECT (SELECT count(*) FROM invocation_lineage WHERE external_agent_id = :id), "
        "(SELECT count(*) FROM invocation_lineage WHERE external_agent_id = :id AND status = 'pending'), "
        "(SELECT count(*) FROM billing_usage WHERE external_agent_id = :id)"
    )
    deadline = time.monotonic() + 30
    while True:
        delivered = httpx.get(f"{platform}/count").json().get(path, 0)
        lineage, pending, billed = connection.execute(query, {"id": agent_id}).one()
        connection.rollback()  # each poll in a transaction of its own, so it sees the rows committed since
        counts = Reconciled(label, answered, delivered, lineage, billed, pending)
        if counts.holds or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


# --- sequential latency -----------------------------------------------------------------------------------------


async def sequential_p50s(app: str, platform: str, agent_id: str, rounds: int) -> dict[str, tuple[float, float]]:
    """Invoke, read and platform direct, one connection each, interleaved so machine noise hits all alike."""
    to_app, to_platform = await LeanConnection.open(app), await LeanConnection.open(platform)
    agent = f"/api/external-agents/{agent_id}"
    calls = {
        "invoke": lambda: to_app.post(f"{agent}/invoke", {"input": "ping"}, HEADERS),
        "read": lambda: to_app.get(agent, HEADERS),
        "platform direct": lambda: to_platform.post("/direct-sequential", {"input": "ping"}, {}),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for index in range(rounds + 20):  # the first 20 rounds warm up
            for name, call in calls.items():
                start = time.perf_counter()
                status, body = await call()
                elapsed = (time.perf_counter() - start) * 1000
                assert status == 200, (name, status, body)
                if index >= 20:
                    samples[name].append(elapsed)
    finally:
        await to_app.close()
        await to_platform.close()
    return {name: percentiles(values) for name, values in samples.items()}


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadFigures:
    runs: dict[str, LoadRun]
    sequential: dict[str, tuple[float, float]]
    reconciled: list[Reconciled]

    def ratios(self) -> dict[str, tuple[float, float, bool]]:
        """Each target: (measured, limit, met)."""
        read, invoke, two = self.runs["read"], self.runs["invoke"], self.runs["invoke, 2 workers"]
        cpu = invoke.cpu_ms["app"] / read.cpu_ms["app"]
        throughput = invoke.rate / read.rate
        invoke_p50 = self.sequential["invoke"][0]
        sequential_limit = SEQUENTIAL_READ_FACTOR * self.sequential["read"][0] + self.sequential["platform direct"][0]
        scaling = two.rate / invoke.rate
        return {
            "CPU per invocation / read's": (cpu, CPU_RATIO_TARGET, cpu <= CPU_RATIO_TARGET),
            "invoke throughput / read's": (throughput, THROUGHPUT_RATIO_TARGET, throughput >= THROUGHPUT_RATIO_TARGET),
            f"seq. invoke p50 / ({SEQUENTIAL_READ_FACTOR} read + platform) p50": (
                invoke_p50 / sequential_limit,
                1.0,
                invoke_p50 <= sequential_limit,
            ),
            "2 workers / 1 worker invoke throughput": (scaling, TWO_WORKERS_TARGET, scaling >= TWO_WORKERS_TARGET),
        }

    def table(self) -> list[str]:
        columns = ("app", "postgres", "redis", "platform", "wrk")
        lines = [
            f"load: wrk -t1 -c{CONNECTIONS} -d{LOAD_SECONDS}s each; CPU ms per request from /proc/<pid>/stat "
            "(app = the server process and its children; postgres = this database's backends + WAL/checkpoint)",
            f"  {'run':<22}{'req/s':>8}{'requests':>9}{'non-2xx':>8}" + "".join(f"{c:>9}" for c in columns),
        ]
        for run in self.runs.values():
            lines.append(
                f"  {run.label:<22}{run.rate:>8.0f}{run.requests:>9}{run.non_2xx:>8}"
                + "".join(f"{run.cpu_ms[c]:>9.3f}" for c in columns)
                + (f"  socket errors: {run.socket_errors}" if run.socket_errors else "")
            )
        lines.append(f"sequential, one connection each, {SEQUENTIAL_ROUNDS} interleaved rounds (lean client):")
        for name, (p50, p95) in self.sequential.items():
            lines.append(f"  {name:<22}p50 {p50:>7.2f} ms   p95 {p95:>7.2f} ms")
        lines.append("reconciled (answered 2xx / platform deliveries / lineage rows / billing rows / pending):")
        for counts in self.reconciled:
            lines.append(
                f"  {counts.label:<22}{counts.answered:>7} {counts.delivered:>7} {counts.lineage:>7} "
                f"{counts.billed:>7} {counts.pending:>3}  {'ok' if counts.holds else 'MISMATCH'}"
            )
        lines.append("targets (issue 12), as ratios to this run's baselines:")
        for name, (measured, limit, met) in self.ratios().items():
            relation = "<=" if "throughput" not in name else ">="
            lines.append(f"  {name:<44}{measured:>6.2f}  {relation} {limit:.2f}  {'met' if met else 'NOT MET'}")
        return lines


def say(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Write to the terminal whether or not pytest captures output (`-v` without `-s`)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        for line in lines:
            reporter.write_line("    " + line)


@pytest.fixture(scope="module")
def counting(stack: dict) -> Iterator[sa.Connection]:
    """The reconciling counts' connection, held from the start: PostgreSQL's 100 connections are shared by
    everyone on this machine, and a count must not fail for want of one after a run."""
    engine = sync_engine(stack["database_url"])
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@pytest.fixture(scope="module")
def load(stack: dict, counting: sa.Connection, request: pytest.FixtureRequest) -> Iterator[LoadFigures]:
    wrk = ensure_wrk()
    data_dir: Path = stack["data_dir"]
    app, platform = stack["app"], stack["platform"]
    redis_pid = redis.Redis.from_url(stack["redis_url"]).info("server")["process_id"]
    database = make_url(stack["database_url"]).database
    watched = Watched(stack["app_pid"], database, redis_pid, int(platform.rsplit(":", 1)[1]))
    read_agent = register_sync(app, platform, "/read", **UNLIMITED)
    read_script = wrk_script(data_dir, "GET", HEADERS, None)
    invoke_script = wrk_script(data_dir, "POST", HEADERS, {"input": "ping"})
    direct_script = wrk_script(data_dir, "POST", {}, {"input": "ping"})
    runs: dict[str, LoadRun] = {}
    reconciled: list[Reconciled] = []

    def invoke_run(base: str, label: str, seconds: int, watching: Watched) -> LoadRun:
        path = f"/load-{uuid.uuid4().hex[:8]}"
        agent_id = register_sync(base, platform, path, **UNLIMITED)
        run = run_wrk(
            wrk,
            f"{base}/api/external-agents/{agent_id}/invoke",
            invoke_script,
            seconds=seconds,
            connections=CONNECTIONS,
            label=label,
            watched=watching,
        )
        answered = run.requests - run.non_2xx
        reconciled.append(reconcile(counting, platform, label=label, agent_id=agent_id, path=path, answered=answered))
        return run

    def other_run(url: str, script: Path, label: str, seconds: int) -> LoadRun:
        return run_wrk(wrk, url, script, seconds=seconds, connections=CONNECTIONS, label=label, watched=watched)

    read_url = f"{app}/api/external-agents/{read_agent}"
    with app_process(stack["env"], log_dir=data_dir, workers=2) as (two_workers, process):
        two = replace(watched, app_pid=process.pid)
        other_run(read_url, read_script, "read (warm-up)", WARM_UP_SECONDS)
        invoke_run(app, "invoke (warm-up)", WARM_UP_SECONDS, watched)
        invoke_run(two_workers, "invoke, 2 workers (warm-up)", WARM_UP_SECONDS, two)
        # Back to back, so the load others put on this machine differs least between the runs compared.
        runs["read"] = other_run(read_url, read_script, "read", LOAD_SECONDS)
        runs["invoke"] = invoke_run(app, "invoke", LOAD_SECONDS, watched)
        runs["invoke, 2 workers"] = invoke_run(two_workers, "invoke, 2 workers", LOAD_SECONDS, two)
    runs["platform direct"] = other_run(f"{platform}/direct", direct_script, "platform direct", LOAD_SECONDS)

    sequential_path = "/sequential"
    sequential_agent = register_sync(app, platform, sequential_path, **UNLIMITED)
    sequential = asyncio.run(sequential_p50s(app, platform, sequential_agent, SEQUENTIAL_ROUNDS))
    reconciled.append(
        reconcile(
            counting,
            platform,
            label="sequential",
            agent_id=sequential_agent,
            path=sequential_path,
            answered=SEQUENTIAL_ROUNDS + 20,
        )
    )

    figures = LoadFigures(runs=runs, sequential=sequential, reconciled=reconciled)
    say(request, figures.table())
    yield figures


# First in the file: after the load runs, autovacuum and the servers' background work would share its cores.
async def test_governance_decision_through_the_workflow(stack, capsys, tmp_path):
    from kailash.workflow.builder import WorkflowBuilder

    # Importing the node modules registers the nodes the governance workflow names.
    import external_agents.nodes.governance.budget
    import external_agents.nodes.governance.policy_check
    import external_agents.nodes.governance.rate_limit
    from external_agents.app_state import build_state
    from external_agents.nodes.invocation import prepare_invocation
    from external_agents.nodes.invocation_state import AgentSnapshot
    from external_agents.settings import load_settings
    from external_agents.stores.agents import get_agent

    settings = load_settings(
        database_url=stack["database_url"],
        redis_url=stack["redis_url"],
        kaizen_data_dir=str(tmp_path),
        external_agent_encryption_key=stack["env"]["EXTERNAL_AGENT_ENCRYPTION_KEY"],
        database_pool_size=2,
    )
    state = build_state(settings)
    async with httpx.AsyncClient(base_url=stack["app"]) as http:
        agent_id = await register(http, stack["platform"], "/governance", **UNLIMITED)
    row = await get_agent(state.engine, organization_id="default", agent_id=agent_id)
    identity = {
        "external_user_id": "u",
        "external_user_email": "u@example.com",
        "external_system": "bench",
        "external_session_id": "s",
    }
    invocation = prepare_invocation(
        caller={"api_key_id": "k", "organization_id": "default"},
        agent_id=agent_id,
        identity=identity,
        body={"input": "x"},
    )
    invocation = invocation.updated(agent=AgentSnapshot.from_row(row))
    for policy in range(10):
        await state.runner.run(
            state.policies.create,
            {
                "policy": {
                    "caller": {"api_key_id": "k", "organization_id": "default"},
                    "body": {
                        "name": f"p{policy}",
                        "effect": "deny",
                        "conditions": [{"type": "environment", "environments": ["never"]}],
                    },
                }
            },
        )

    builder = WorkflowBuilder()
    builder.add_node(
        "PolicyCheckNode",
        "policy",
        {
            "policy_cache": state.policy_cache,
            "resolution": settings.external_agent_policy_conflict_resolution,
            "fail_mode": settings.external_agent_policy_fail_mode,
        },
    )
    builder.add_node("RateLimitNode", "rate_limit", {"limiter": state.limiter})
    builder.add_node(
        "BudgetReserveNode",
        "budget",
        {
            "engine": state.engine,
            "thresholds": external_agents.nodes.governance.budget.BudgetThresholds(warning=0.8, degradation=0.9),
            "lease": state.lease,
        },
    )
    builder.add_connection("policy", "invocation", "rate_limit", "invocation")
    builder.add_connection("rate_limit", "invocation", "budget", "invocation")
    workflow = builder.build(name="governance_decision")

    # Each decision writes its invocation's pending lineage row, so each run is a new invocation (ids made
    # before timing starts).
    runs = iter(
        [replace(invocation, invocation_id=str(uuid.uuid4()), trace_id=f"trc_{uuid.uuid4().hex}") for _ in range(1_050)]
    )

    async def through_workflow() -> None:
        results = await state.runner.run(workflow, {"policy": {"invocation": next(runs).to_json()}})
        assert results["budget"]["invocation"]["denial"] is None

    from external_agents.nodes.governance.rate_limit import limits_of

    connection = await asyncpg.connect(stack["database_url"])
    limits = limits_of(invocation.loaded_agent)
    counter_day = f"{agent_id}|day|{time.strftime('%Y-%m-%d', time.gmtime())}"

    async def direct_calls() -> None:
        await state.limiter.hit(agent_id, limits)
        async with connection.transaction():
            await connection.fetch(
                "UPDATE budget_counters SET spent_micros = spent_micros + $1, executions = executions + 1 "
                "WHERE id = $2 AND spent_micros + $1 <= $3 RETURNING spent_micros",
                100,
                counter_day,
                10**15,
            )

    await timed(through_workflow, 50)
    await timed(direct_calls, 50)
    workflow_ms, direct_ms = [], []
    for _ in range(10):  # interleaved, so machine noise hits both alike
        workflow_ms += await timed(through_workflow, 100)
        direct_ms += await timed(direct_calls, 100)
    await connection.close()
    await state.aclose()
    w_med, w_p95 = percentiles(workflow_ms)
    d_med, d_p95 = percentiles(direct_ms)
    report(
        capsys,
        [
            "governance decision, 1,000 runs each (10 policies, Redis rate limit, PostgreSQL budget reserve):",
            f"through the workflow: median {w_med:.3f} ms  p95 {w_p95:.3f} ms",
            f"direct Redis + SQL baseline: median {d_med:.3f} ms  p95 {d_p95:.3f} ms",
            f"ratio workflow/direct: median {w_med / d_med:.2f}x  p95 {w_p95 / d_p95:.2f}x  (target p95 <= 3x)",
        ],
    )
    # Issue 3 asked for 3 ms when the direct calls took about 1 ms here: the same goal, as a ratio.
    assert w_p95 <= 3.0 * d_p95


def test_every_load_run_answered_and_reconciled(load: LoadFigures) -> None:
    for run in load.runs.values():
        assert run.non_2xx == 0 and not run.socket_errors, run
    for counts in load.reconciled:
        assert counts.holds, counts


def test_cpu_per_invocation_at_most_1_5x_the_read(load: LoadFigures) -> None:
    measured, limit, met = load.ratios()["CPU per invocation / read's"]
    assert met, f"an invocation costs {measured:.2f}x the read's CPU (target <= {limit}x)"


def test_invoke_throughput_at_least_0_6x_the_read(load: LoadFigures) -> None:
    measured, limit, met = load.ratios()["invoke throughput / read's"]
    assert met, f"invoke throughput is {measured:.2f}x the read's (target >= {limit}x)"


def test_sequential_invoke_p50_within_the_read_and_the_platform(load: LoadFigures) -> None:
    invoke, read, direct = (load.sequential[name][0] for name in ("invoke", "read", "platform direct"))
    assert invoke <= SEQUENTIAL_READ_FACTOR * read + direct, (
        f"sequential invoke p50 {invoke:.2f} ms > {SEQUENTIAL_READ_FACTOR} x read {read:.2f} ms"
        f" + platform {direct:.2f} ms"
    )


def test_two_workers_at_least_1_7x_one(load: LoadFigures) -> None:
    measured, limit, met = load.ratios()["2 workers / 1 worker invoke throughput"]
    assert met, f"two workers serve {measured:.2f}x one worker's invocations (target >= {limit}x)"


async def test_exact_limits_and_budgets_across_two_processes(stack, capsys):
    env = stack["env"]
    with app_server(env, log_dir=stack["data_dir"]) as second:
        apps = [stack["app"], second]
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as http:
            http.base_url = apps[0]
            rate_agent = await register(
                http,
                stack["platform"],
                "/exact-rate",
                max_daily_cost=1000.0,
                max_monthly_cost=1000.0,
                cost_per_execution=0.01,
                requests_per_minute=37,
                requests_per_hour=1000,
                requests_per_day=1000,
            )
            budget_agent = await register(
                http,
                stack["platform"],
                "/exact-budget",
                max_daily_cost=0.41,
                max_monthly_cost=1000.0,
                cost_per_execution=0.01,
                requests_per_minute=1000,
                requests_per_hour=1000,
                requests_per_day=1000,
            )

            async def fire(agent_id: str, index: int) -> int:
                response = await http.post(
                    f"{apps[index % 2]}/api/external-agents/{agent_id}/invoke", json={"input": index}, headers=HEADERS
                )
                return response.status_code

            rate_codes = await asyncio.gather(*(fire(rate_agent, i) for i in range(200)))
            budget_codes = await asyncio.gather(*(fire(budget_agent, i) for i in range(200)))
            delivered = (await http.get(f"{stack['platform']}/count")).json()

    engine = sync_engine(stack["database_url"])
    with engine.connect() as connection:
        billed = connection.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(round(cost_usd * 1000000)), 0) FROM billing_usage "
                "WHERE external_agent_id = :id"
            ),
            {"id": budget_agent},
        ).one()
    engine.dispose()
    report(
        capsys,
        [
            "200 concurrent invocations over two app processes, per agent:",
            f"rate limit 37/min: {rate_codes.count(200)} x 200, {rate_codes.count(429)} x 429, "
            f"platform received {delivered.get('/exact-rate', 0)}",
            f"daily budget $0.41 at $0.01: {budget_codes.count(200)} x 200, {budget_codes.count(402)} x 402, "
            f"billed {billed[0]} rows = ${billed[1] / 1_000_000:.2f}, "
            f"platform received {delivered.get('/exact-budget', 0)}",
        ],
    )
    assert (rate_codes.count(200), rate_codes.count(429)) == (37, 163)
    assert delivered.get("/exact-rate", 0) == 37
    assert (budget_codes.count(200), budget_codes.count(402)) == (41, 159)
    assert billed[0] == 41 and billed[1] == 410_000
    assert delivered.get("/exact-budget", 0) == 41
