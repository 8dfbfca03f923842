"""Schemathesis over the app's own OpenAPI schema, in-process through the ASGI app: no response is a 5xx.

Every operation in /openapi.json (ours and Nexus's) gets at least `EXAMPLES` generated requests in each mode,
schema-conforming (positive) and schema-violating (negative), each sent with a valid admin key and without
one. Generated path ids rarely name anything, so half the examples of the read and invoke operations name a
real agent, invocation or policy instead (with the identity headers an invocation needs), which carries the
generated bodies and queries into the workflows. The figures per operation are printed; an operation whose
whole input space is smaller than `EXAMPLES` (no parameters at all) is reported as exhausted.

Run: pytest tests/faults/test_schemathesis.py -s   (PostgreSQL and Redis from TEST_POSTGRES_URL/TEST_REDIS_URL;
a database `ea_schemathesis_test` of its own)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi

from tests.factories import TEST_POSTGRES_URL, TEST_REDIS_URL, drop_database, make_settings, reset_postgres_database
from tests.platform_server import PlatformServer

EXAMPLES = 100
DATABASE = TEST_POSTGRES_URL.rsplit("/", 1)[0] + "/ea_schemathesis_test"
API_KEY = "eak_schemathesis_admin_0123456789abcdefghijklmn"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
IDENTITY = {
    "X-External-User-ID": "fuzz-user",
    "X-External-User-Email": "fuzz@example.com",
    "X-External-System": "schemathesis",
    "X-External-Session-ID": "fuzz-session",
}
# Operations that may name a real resource without harm: reads and invocations (never PATCH or DELETE, which
# would change or remove the resources the other examples rely on).
REAL_ID_METHODS = ("GET", "POST")


@dataclass
class Tally:
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    no_negative: bool = False


@dataclass
class Fixture:
    schema: Any
    real_ids: dict[str, str]
    inputless: set[str] = field(default_factory=set)
    tallies: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))


@pytest.fixture
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    from external_agents.models.migrate import upgrade
    from external_agents.nexus_app import build_app

    data_dir = tmp_path_factory.mktemp("schemathesis")
    reset_postgres_database(DATABASE)
    app_settings = make_settings(DATABASE, str(data_dir), redis_url=TEST_REDIS_URL)
    upgrade(app_settings, report=lambda _line: None)
    asyncio.run(create_key(app_settings))
    platform = PlatformServer()
    app = build_app(app_settings)
    # Schemathesis runs the app (lifespan included) on an event loop thread of its own, and ends the lifespan
    # after each test (so the app is built per test); everything that talks to the app goes through its ASGI
    # client, so the app's connections stay on that one loop.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app.fastapi_app, headers=AUTH)
    try:
        with schemathesis_asgi.get_client(app.fastapi_app) as http:
            real_ids = seed(http, platform)
        yield Fixture(schema=schema, real_ids=real_ids)
    finally:
        schemathesis_asgi.shutdown_lifespans()
        platform.close()
        drop_database(DATABASE)


async def create_key(app_settings: Any) -> None:
    from external_agents.stores.api_keys import create_api_key
    from external_agents.stores.database import create_engine

    engine = create_engine(app_settings)
    try:
        await create_api_key(engine, organization_id="fuzz-org", name="fuzz", permissions=["admin"], key=API_KEY)
    finally:
        await engine.dispose()


def seed(http: Any, platform: PlatformServer) -> dict[str, str]:
    """One agent (unlimited, on the local platform), one invocation and one policy that never matches."""
    agent = http.post(
        "/api/external-agents",
        json={
            "name": f"fuzz-{uuid.uuid4().hex[:6]}",
            "platform": "custom_http",
            "platform_config": {"url": platform.url("/fuzz")},
            "requests_per_minute": 10_000_000,
            "requests_per_hour": 10_000_000,
            "requests_per_day": 10_000_000,
            "max_daily_cost": 1_000_000.0,
            "max_monthly_cost": 1_000_000.0,
        },
        headers=AUTH,
    )
    assert agent.status_code == 201, agent.text
    agent_id = agent.json()["id"]
    invocation = http.post(
        f"/api/external-agents/{agent_id}/invoke", json={"input": "seed"}, headers={**AUTH, **IDENTITY}
    )
    assert invocation.status_code == 200, invocation.text
    policy = http.post(
        "/api/policies",
        json={"name": "never", "effect": "deny", "conditions": [{"type": "environment", "environments": ["no"]}]},
        headers=AUTH,
    )
    assert policy.status_code == 201, policy.text
    return {
        "agent_id": agent_id,
        "invocation_id": invocation.json()["invocation_id"],
        "policy_id": policy.json()["policy_id"],
    }


def fuzz_operation(fixture: Fixture, operation: Any, *, authorized: bool, mode: GenerationMode) -> Tally:
    tally = fixture.tallies[(f"{operation.method.upper()} {operation.path}", "key" if authorized else "no key")]
    real = {name: value for name, value in fixture.real_ids.items() if "{" + name + "}" in operation.path}
    use_real = st.booleans() if real and operation.method.upper() in REAL_ID_METHODS else st.just(False)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), name_real=use_real)
    def run(case: Any, name_real: bool) -> None:
        headers = dict(AUTH) if authorized else {}
        if name_real:
            case.path_parameters = {**case.path_parameters, **real}
            headers |= IDENTITY
        tally.examples += 1
        try:
            response = case.call(headers=headers, timeout=30)
        except Exception as exc:
            # The app raised past its error handlers: a real server would have answered 500.
            tally.statuses[500] += 1
            tally.server_errors.append(f"{case.method} {case.formatted_path} {case.query} raised {exc!r}"[:300])
            return
        tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            tally.server_errors.append(f"{case.method} {case.formatted_path} {case.query} -> {response.text[:200]}")

    try:
        run()
    except Unsatisfiable:
        # A schema that every value satisfies (a plain string id) has no negative examples; nothing was skipped.
        if mode is not GenerationMode.NEGATIVE:
            raise
        tally.no_negative = True
    return tally


def operations(fixture: Fixture) -> list[Any]:
    found = [result.ok() for result in fixture.schema.get_all_operations()]
    assert len(found) >= 30, f"only {len(found)} operations in /openapi.json"
    return found


@pytest.mark.parametrize("authorized", [True, False], ids=["with-key", "without-key"])
def test_no_operation_answers_5xx(fuzz: Fixture, authorized: bool, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    for operation in operations(fuzz):
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if not (operation.path_parameters or operation.query or operation.headers or operation.body):
            # Nothing to violate: a negative example of an operation without inputs cannot exist.
            fuzz.inputless.add(f"{operation.method.upper()} {operation.path}")
            modes.remove(GenerationMode.NEGATIVE)
        for mode in modes:
            fuzz_operation(fuzz, operation, authorized=authorized, mode=mode)
    elapsed = time.perf_counter() - started
    label = "key" if authorized else "no key"
    rows = {op: tally for (op, auth), tally in fuzz.tallies.items() if auth == label}
    with capsys.disabled():
        print(f"\n    schemathesis, {label}: {sum(t.examples for t in rows.values())} requests in {elapsed:.0f} s")
        for op, tally in sorted(rows.items()):
            statuses = " ".join(f"{code}x{count}" for code, count in sorted(tally.statuses.items()))
            note = "  (no schema-violating input exists)" if tally.no_negative else ""
            print(f"    {op:70} {tally.examples:5} examples  {statuses}{note}")
    if authorized:
        # Naming real resources is what carries generated bodies into the workflows: prove it happened.
        assert rows["POST /api/external-agents/{agent_id}/invoke"].statuses[200] > 0
    failures = {op: tally.server_errors[:3] for op, tally in rows.items() if tally.server_errors}
    assert not failures, failures
    if not authorized:
        # Only health and version answer without a key; the rest is 401, or 400 for a NUL in the URL (refused,
        # like an oversized request, before authentication).
        public = {"GET /api/health", "GET /api/version"}
        past_auth = {
            op: dict(t.statuses)
            for op, t in rows.items()
            if not set(t.statuses) <= ({200} if op in public else {400, 401})
        }
        assert not past_auth, past_auth
    # Fewer than EXAMPLES only where hypothesis ran out of distinct inputs: an operation without parameters.
    thin = {op: t.examples for op, t in rows.items() if t.examples < EXAMPLES and op not in fuzz.inputless}
    assert not thin, thin
