"""Revoking an API key takes effect on every gateway instance at once, although each keeps known keys in memory.

Two `external-agents serve` processes on one PostgreSQL and Redis; a key is used on both (so both hold it), then
revoked by the operator's CLI, a third process. The revocation's notice is sent by PostgreSQL when the CLI's
transaction commits, before the CLI exits, so the next request to either instance is refused; the test polls with
a deadline anyway, since the notice reaches each instance asynchronously, and asserts that no request after the
CLI returned was accepted.

The second test ends both instances' listening connections first (as a network fault or a PostgreSQL restart
would): a revocation they cannot hear of, made by hand in SQL, is refused all the same, because an instance that
is not listening serves nothing from memory and empties it before listening again.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from external_agents.stores.api_key_cache import LISTENER_APPLICATION_NAME
from external_agents.stores.api_keys import generate_key, hash_key
from tests.factories import IDENTITY, TEST_POSTGRES_URL, TEST_REDIS_URL, drop_database, sql
from tests.process_servers import ROOT, app_env, app_server, fresh_database

DATABASE = (
    make_url(TEST_POSTGRES_URL)
    .set(database=f"{make_url(TEST_POSTGRES_URL).database}_instances")
    .render_as_string(hide_password=False)
)
BOUND_SECONDS = 2.0
# The instances' listening connections (stores/api_key_cache.py), as a FROM clause.
LISTENERS = "FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("key-instances")
    fresh_database(DATABASE, str(data_dir))
    env = app_env(database_url=DATABASE, redis_url=TEST_REDIS_URL, data_dir=str(data_dir), DATABASE_POOL_SIZE="4")
    with ExitStack() as stack:
        apps = [stack.enter_context(app_server(env, log_dir=data_dir)) for _ in range(2)]
        yield {"apps": apps, "env": env}
    drop_database(DATABASE)


def new_key() -> tuple[str, str]:
    """A read-only key of an organisation of its own, stored as the store stores it: (id, key)."""
    key_id, key = str(uuid.uuid4()), generate_key()
    sql(
        DATABASE,
        "INSERT INTO api_keys (id, organization_id, name, key_hash, key_prefix, permissions) "
        "VALUES (%s, %s, 'instances', %s, %s, '[\"read:external_agent\"]')",
        key_id,
        f"org-{uuid.uuid4().hex[:8]}",
        hash_key(key),
        key[:12],
    )
    return key_id, key


def cli_revoke(env: dict[str, str], key_id: str) -> None:
    command = [sys.executable, "-m", "external_agents.channels.cli", "keys", "revoke", key_id]
    operator = {k: v for k, v in env.items() if k != "KAIZEN_BOOTSTRAP_API_KEY"}
    done = subprocess.run(command, cwd=ROOT, env=operator, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Revoked key {key_id}"


def status(client: httpx.Client, base: str, key: str) -> int:
    return client.get(f"{base}/api/external-agents", headers={"Authorization": f"Bearer {key}", **IDENTITY}).status_code


def accepted_until_refused(client: httpx.Client, base: str, key: str) -> int:
    """How many requests with `key` were still accepted before the first 401; fails past BOUND_SECONDS."""
    started, accepted = time.monotonic(), 0
    while (answer := status(client, base, key)) != 401:
        assert answer == 200, answer
        accepted += 1
        assert time.monotonic() - started < BOUND_SECONDS, f"{base} still accepts the key after {BOUND_SECONDS} s"
    return accepted


def use_on_every_instance(client: httpx.Client, apps: list[str], key: str) -> None:
    for base in apps:
        assert [status(client, base, key) for _ in range(3)] == [200, 200, 200]


def test_a_key_revoked_by_the_cli_is_refused_by_every_instance_on_the_next_request(instances):
    apps = instances["apps"]
    key_id, key = new_key()
    _other_id, other = new_key()
    with httpx.Client(timeout=10) as client:
        use_on_every_instance(client, apps, key)
        use_on_every_instance(client, apps, other)
        cli_revoke(instances["env"], key_id)
        late = {base: accepted_until_refused(client, base, key) for base in apps}
        assert late == dict.fromkeys(apps, 0), f"requests accepted after the revocation returned: {late}"
        # Only that key: the other is still accepted everywhere.
        assert [status(client, base, other) for base in apps] == [200, 200]


def test_an_instance_that_lost_its_listening_connection_serves_no_key_from_memory(instances):
    apps = instances["apps"]
    key_id, key = new_key()
    with httpx.Client(timeout=10) as client:
        use_on_every_instance(client, apps, key)
        # Waiting (up to 5 s) until each backend has exited, so its socket is closed when this returns.
        [(ended,)] = sql(
            DATABASE, f"SELECT count(pg_terminate_backend(pid, 5000)) {LISTENERS}", LISTENER_APPLICATION_NAME
        )
        assert ended == len(apps)
        # No notice reaches anyone: the instances can only refuse because they no longer trust their memory.
        sql(DATABASE, "UPDATE api_keys SET revoked_at = now() WHERE id = %s", key_id)
        late = {base: accepted_until_refused(client, base, key) for base in apps}
        assert late == dict.fromkeys(apps, 0), f"requests accepted while not listening: {late}"
        # Each reconnects after half a second and starts again from an empty cache.
        started = time.monotonic()
        while sql(DATABASE, f"SELECT count(*) {LISTENERS}", LISTENER_APPLICATION_NAME) != [(len(apps),)]:
            assert time.monotonic() - started < BOUND_SECONDS * 5, "the instances did not listen again"
            time.sleep(0.05)
        assert [status(client, base, key) for base in apps] == [401, 401]
