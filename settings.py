"""The gateway's configuration: read once from the environment and an optional `.env`, validated, passed down.

Nothing else in the project reads `os.environ`. With nothing set the service runs on embedded defaults: a
SQLite file and the encryption key file in the data directory, and an in-process rate limiter.
A bad value stops start-up with `SettingsError`, whose message is one line per bad variable naming it and
the fix.
"""

from __future__ import annotations

import logging
import os
import stat
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

FERNET_HOWTO = (
    'generate one with: python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class SettingsError(Exception):
    """Configuration that the service refuses to start with."""


class ConflictResolution(StrEnum):
    DENY_OVERRIDES = "DENY_OVERRIDES"
    ALLOW_OVERRIDES = "ALLOW_OVERRIDES"
    FIRST_APPLICABLE = "FIRST_APPLICABLE"


class PolicyFailMode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _check_fernet_key(value: str | None) -> str | None:
    if not value:
        return None
    from cryptography.fernet import Fernet

    try:
        Fernet(value.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid Fernet key (32 url-safe base64-encoded bytes); {FERNET_HOWTO}") from exc
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    kaizen_env: Environment = Environment.DEVELOPMENT
    kaizen_data_dir: Path = Path(".external-agents")
    kaizen_bootstrap_api_key: str | None = None
    kaizen_bootstrap_org: str = Field("default", min_length=1, max_length=255)
    kaizen_max_body_bytes: int = Field(1_048_576, gt=0)
    kaizen_max_header_bytes: int = Field(16_384, gt=0)

    database_url: str | None = None
    database_pool_size: int = Field(20, gt=0, le=1000)

    redis_url: str | None = None
    redis_max_connections: int = Field(50, gt=0)
    redis_timeout_seconds: float = Field(5.0, gt=0)

    external_agent_default_monthly_budget: float = Field(100.0, ge=0)
    external_agent_default_daily_budget: float = Field(10.0, ge=0)
    external_agent_default_cost_per_execution: float = Field(0.05, ge=0)
    external_agent_default_rate_limit_per_minute: int = Field(10, gt=0)
    external_agent_default_rate_limit_per_hour: int = Field(100, gt=0)
    external_agent_default_rate_limit_per_day: int = Field(500, gt=0)

    external_agent_encryption_key: str | None = None
    external_agent_encryption_key_new: str | None = None

    external_agent_budget_warning_threshold: float = Field(0.80, gt=0, le=1)
    external_agent_budget_degradation_threshold: float = Field(0.90, gt=0, le=1)
    external_agent_rate_limit_fail_open: bool = True

    external_agent_webhook_timeout_seconds: float = Field(30.0, gt=0, le=600)
    external_agent_webhook_retry_attempts: int = Field(3, ge=0, le=10)
    # Bulkheads: deliveries in flight at once per agent and per platform host (beyond them: 503, retry shortly).
    external_agent_max_concurrent_deliveries_per_agent: int = Field(50, gt=0, le=10_000)
    external_agent_max_concurrent_deliveries_per_host: int = Field(100, gt=0, le=10_000)
    # A platform's reported cost above this is not believed: the estimate is billed and the record says why.
    external_agent_max_reported_cost_usd: Decimal = Field(Decimal(1000), gt=0, le=Decimal(10**12), decimal_places=6)

    external_agent_policy_conflict_resolution: ConflictResolution = ConflictResolution.DENY_OVERRIDES
    external_agent_policy_fail_mode: PolicyFailMode = PolicyFailMode.CLOSED

    # The organisation's external agent that receives budget warning and degradation alerts.
    external_agent_alert_channel_name: str = Field("alerts", min_length=1, max_length=255)

    external_agent_allowed_webhook_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    external_agent_allow_private_webhooks: bool = False

    @field_validator("external_agent_allowed_webhook_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [d.strip().lower().lstrip(".") for d in value.split(",") if d.strip()]
        return value

    @field_validator("external_agent_encryption_key", "external_agent_encryption_key_new")
    @classmethod
    def _fernet(cls, value: str | None) -> str | None:
        return _check_fernet_key(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("postgresql", "postgres://", "sqlite")):
            raise ValueError("must start with postgresql:// or sqlite:///")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @field_validator("external_agent_policy_conflict_resolution", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("kaizen_env", "external_agent_policy_fail_mode", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _thresholds_and_production(self) -> Settings:
        if self.external_agent_budget_warning_threshold > self.external_agent_budget_degradation_threshold:
            raise ValueError(
                "EXTERNAL_AGENT_BUDGET_WARNING_THRESHOLD must not exceed EXTERNAL_AGENT_BUDGET_DEGRADATION_THRESHOLD"
            )
        if self.kaizen_env is Environment.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("EXTERNAL_AGENT_ENCRYPTION_KEY", self.external_agent_encryption_key),
                    ("DATABASE_URL", self.database_url),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"KAIZEN_ENV=production requires {' and '.join(missing)} to be set")
        return self

    @property
    def sqlite_path(self) -> Path:
        return self.kaizen_data_dir / "external_agents.db"

    @property
    def key_file(self) -> Path:
        return self.kaizen_data_dir / "encryption.key"

    @property
    def effective_database_url(self) -> str:
        """The configured database, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.sqlite_path}"

    @property
    def async_database_url(self) -> str:
        """SQLAlchemy URL with the asyncio driver of the configured database."""
        url = self.effective_database_url
        for prefix in ("postgresql+asyncpg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]

    @property
    def sync_database_url(self) -> str:
        """SQLAlchemy URL with a blocking driver, for migrations."""
        url = self.async_database_url
        if url.startswith("postgresql+asyncpg://"):
            return "postgresql+psycopg2://" + url[len("postgresql+asyncpg://") :]
        return "sqlite://" + url[len("sqlite+aiosqlite://") :]

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")


def _describe(error: dict) -> str:
    loc = error.get("loc") or ()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        return f"Invalid configuration: {message}"
    name = str(loc[0]).upper()
    return f"Invalid {name}: {message}"


def load_settings(*, embedded_key: bool = True, **overrides: object) -> Settings:
    """Read and validate the configuration; with `embedded_key`, read or make the development key file when
    EXTERNAL_AGENT_ENCRYPTION_KEY is unset (commands that never touch credentials pass False).

    Raises SettingsError with one line per bad variable.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError("\n".join(_describe(e) for e in exc.errors())) from None
    if embedded_key and not settings.external_agent_encryption_key:
        settings.external_agent_encryption_key = _embedded_key(settings.key_file)
    return settings


def _embedded_key(path: Path) -> str:
    """The development encryption key, generated once and kept in a 0600 file so credentials survive restarts."""
    from cryptography.fernet import Fernet

    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        try:
            return _check_fernet_key(key) or ""
        except ValueError as exc:
            raise SettingsError(f"Invalid key file {path}: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    logger.warning(
        "EXTERNAL_AGENT_ENCRYPTION_KEY is not set: generated a development key in %s (mode 0600). "
        "Set EXTERNAL_AGENT_ENCRYPTION_KEY in production.",
        path,
    )
    return key
