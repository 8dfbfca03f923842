"""Settings: one clear line per bad variable, production refusals, and the embedded key that survives restarts."""

from __future__ import annotations

import os
import stat
from decimal import Decimal

import pytest

from external_agents.settings import Environment, SettingsError, load_settings
from tests.factories import TEST_FERNET_KEY


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in list(os.environ):
        if name.startswith(("EXTERNAL_AGENT_", "KAIZEN_", "DATABASE_", "REDIS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env is read


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS", "abc", "valid number"),
        ("EXTERNAL_AGENT_WEBHOOK_TIMEOUT_SECONDS", "0", "greater than 0"),
        ("EXTERNAL_AGENT_WEBHOOK_RETRY_ATTEMPTS", "-1", "greater than or equal to 0"),
        ("EXTERNAL_AGENT_DEFAULT_RATE_LIMIT_PER_MINUTE", "1.5", "valid integer"),
        ("EXTERNAL_AGENT_RATE_LIMIT_FAIL_OPEN", "maybe", "valid boolean"),
        ("EXTERNAL_AGENT_POLICY_CONFLICT_RESOLUTION", "RANDOM", "DENY_OVERRIDES"),
        ("EXTERNAL_AGENT_POLICY_FAIL_MODE", "sideways", "closed"),
        ("EXTERNAL_AGENT_BUDGET_WARNING_THRESHOLD", "1.5", "less than or equal to 1"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("REDIS_URL", "http://x", "redis://"),
        ("KAIZEN_ENV", "staging", "development"),
        ("EXTERNAL_AGENT_MAX_REPORTED_COST_USD", "0", "greater than 0"),
        ("EXTERNAL_AGENT_MAX_REPORTED_COST_USD", "0.0000001", "decimal places"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, variable, value, fragment):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"Invalid {variable}:") and "\n" not in message
    assert fragment in message


def test_an_invalid_fernet_key_says_how_to_generate_one(monkeypatch):
    monkeypatch.setenv("EXTERNAL_AGENT_ENCRYPTION_KEY", "not-a-key")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "Invalid EXTERNAL_AGENT_ENCRYPTION_KEY" in str(caught.value)
    assert "Fernet.generate_key()" in str(caught.value)


def test_thresholds_must_be_ordered(monkeypatch):
    monkeypatch.setenv("EXTERNAL_AGENT_BUDGET_WARNING_THRESHOLD", "0.95")
    monkeypatch.setenv("EXTERNAL_AGENT_BUDGET_DEGRADATION_THRESHOLD", "0.90")
    with pytest.raises(SettingsError, match="must not exceed EXTERNAL_AGENT_BUDGET_DEGRADATION_THRESHOLD"):
        load_settings()


def test_production_refuses_to_start_without_key_and_database(monkeypatch):
    monkeypatch.setenv("KAIZEN_ENV", "production")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "EXTERNAL_AGENT_ENCRYPTION_KEY and DATABASE_URL" in str(caught.value)
    monkeypatch.setenv("EXTERNAL_AGENT_ENCRYPTION_KEY", TEST_FERNET_KEY)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/x")
    assert load_settings().kaizen_env is Environment.PRODUCTION


def test_embedded_defaults_and_a_key_that_survives_restarts(tmp_path):
    first = load_settings()
    assert first.is_sqlite and first.redis_url is None
    assert first.async_database_url == "sqlite+aiosqlite:///.external-agents/external_agents.db"
    key_file = tmp_path / ".external-agents" / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_settings().external_agent_encryption_key == first.external_agent_encryption_key
    assert key_file.read_text().strip() == first.external_agent_encryption_key


def test_commands_that_never_encrypt_make_no_key_file(tmp_path):
    assert load_settings(embedded_key=False).external_agent_encryption_key is None
    assert not (tmp_path / ".external-agents" / "encryption.key").exists()


def test_a_corrupt_key_file_stops_start_up(tmp_path):
    (tmp_path / ".external-agents").mkdir()
    (tmp_path / ".external-agents" / "encryption.key").write_text("garbage\n")
    with pytest.raises(SettingsError, match="Invalid key file"):
        load_settings()


def test_env_file_is_read_and_urls_are_normalised(tmp_path):
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgres://u@db:5432/kaizen\n"
        "EXTERNAL_AGENT_ALLOWED_WEBHOOK_DOMAINS=Hooks.Slack.com, .example.com\n"
    )
    settings = load_settings(embedded_key=False)
    assert settings.async_database_url == "postgresql+asyncpg://u@db:5432/kaizen"
    assert settings.sync_database_url == "postgresql+psycopg2://u@db:5432/kaizen"
    assert settings.external_agent_allowed_webhook_domains == ["hooks.slack.com", "example.com"]


def test_the_maximum_reported_cost_is_a_decimal(monkeypatch):
    assert load_settings().external_agent_max_reported_cost_usd == Decimal(1000)
    monkeypatch.setenv("EXTERNAL_AGENT_MAX_REPORTED_COST_USD", "2.5")
    assert load_settings().external_agent_max_reported_cost_usd == Decimal("2.5")
