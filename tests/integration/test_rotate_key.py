"""`external-agents rotate-key`: every agent re-encrypted to the new key, nothing lost when a run is interrupted."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack

import pytest
from cryptography.fernet import Fernet, InvalidToken
from typer.testing import CliRunner, Result

from external_agents.app_state import build_state
from external_agents.channels.cli import app
from external_agents.credential_cipher import CredentialCipher
from external_agents.stores.agents import all_credential_tokens, replace_credential_token
from tests.factories import TEST_FERNET_KEY, make_settings, throwaway_database

NEW_KEY = Fernet.generate_key().decode()
CALLER = {"api_key_id": "k", "organization_id": "org-rotate"}


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request, tmp_path, postgres_url):
    from external_agents.models.migrate import upgrade

    with ExitStack() as cleanup:
        if request.param == "postgres":
            url = cleanup.enter_context(throwaway_database(postgres_url, prefix="ea_rotate_"))
        else:
            url = f"sqlite:///{tmp_path}/rotate.db"
        settings = make_settings(url, str(tmp_path))
        upgrade(settings, report=lambda _line: None)
        state = build_state(settings)
        for index in range(3):
            body = {
                "name": f"agent-{index}",
                "platform": "custom_http",
                "platform_config": {"url": "https://api.example.com/hook"},
                "auth_config": {"auth_type": "bearer_token", "credentials": {"token": f"secret-{index}"}},
            }
            await state.runner.run(state.registry.create, {"create_agent": {"caller": CALLER, "body": body}})
        yield url, state
        await state.aclose()


async def rotate(monkeypatch: pytest.MonkeyPatch, url: str, tmp_path) -> Result:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXTERNAL_AGENT_ENCRYPTION_KEY", TEST_FERNET_KEY)
    monkeypatch.setenv("EXTERNAL_AGENT_ENCRYPTION_KEY_NEW", NEW_KEY)
    # The command runs its own event loop, as from a shell: give it a thread of its own.
    return await asyncio.to_thread(CliRunner().invoke, app, ["rotate-key"])


def sealed_tokens(tokens: list[tuple[str, bytes]], key: str) -> dict[str, dict]:
    return {agent_id: json.loads(Fernet(key.encode()).decrypt(token)) for agent_id, token in tokens}


async def test_rotation_resumes_after_an_interruption_and_loses_nothing(database, monkeypatch, tmp_path):
    url, state = database
    before = await all_credential_tokens(state.engine)
    originals = sealed_tokens(before, TEST_FERNET_KEY)
    # An earlier run stopped after its first agent: that one is already under the new key.
    first_id, first_token = before[0]
    partial = CredentialCipher([NEW_KEY, TEST_FERNET_KEY]).rotate(first_token)
    assert await replace_credential_token(state.engine, agent_id=first_id, old=first_token, new=partial)

    result = await rotate(monkeypatch, url, tmp_path)
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 3 agent(s)" in result.output

    after = await all_credential_tokens(state.engine)
    assert sealed_tokens(after, NEW_KEY) == originals
    for _agent_id, token in after:
        with pytest.raises(InvalidToken):
            Fernet(TEST_FERNET_KEY.encode()).decrypt(token)
    assert all(f"secret-{i}" not in result.output for i in range(3))


async def test_a_token_under_neither_key_stops_with_a_clear_error(database, monkeypatch, tmp_path):
    url, state = database
    [(agent_id, token), *_] = await all_credential_tokens(state.engine)
    foreign = Fernet(Fernet.generate_key()).encrypt(b'{"version":1,"credentials":{}}')
    assert await replace_credential_token(state.engine, agent_id=agent_id, old=token, new=foreign)
    result = await rotate(monkeypatch, url, tmp_path)
    assert result.exit_code == 1
    assert f"agent {agent_id}: its credentials match neither key" in result.output


async def test_rotation_needs_the_new_key(monkeypatch, tmp_path):
    monkeypatch.setenv("KAIZEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXTERNAL_AGENT_ENCRYPTION_KEY", TEST_FERNET_KEY)
    monkeypatch.delenv("EXTERNAL_AGENT_ENCRYPTION_KEY_NEW", raising=False)
    result = await asyncio.to_thread(CliRunner().invoke, app, ["rotate-key"])
    assert result.exit_code == 2 and "EXTERNAL_AGENT_ENCRYPTION_KEY_NEW" in result.output
