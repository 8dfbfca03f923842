"""What an operator with database access does without an API key: issue, list and revoke API keys, re-encrypt
every agent's credentials under a new key, archive old lineage and billing rows, and check (and repair) the
budget counters against billing and live reservations.

Each is a gateway operation like the caller's ones in `gateway.operations`: it takes the database engine, returns
a typed result or raises one of `external_agents.errors`, and leaves presenting the result (tables, progress
bars, exit codes) to the channel, today the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from external_agents.credential_cipher import CredentialCipher, CredentialDecryptionError
from external_agents.errors import ExternalAgentsError, NotFoundError, ValidationError
from external_agents.stores import api_keys, reconcile, retention
from external_agents.stores.agents import all_credential_tokens, replace_credential_token


@dataclass(frozen=True, kw_only=True)
class ApiKeyRecord:
    """An API key as it is stored: never the key itself, only the first characters to recognise it by."""

    id: str
    organization_id: str
    name: str
    prefix: str
    permissions: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKeyRecord:
        return cls(
            id=row["id"],
            organization_id=row["organization_id"],
            name=row["name"],
            prefix=row["key_prefix"],
            permissions=tuple(row["permissions"]),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKeyRecord
    # The plaintext, which is stored nowhere: shown once, to the operator who created it.
    key: str


@dataclass(frozen=True)
class RotationResult:
    rotated: int
    # Changed meanwhile by an update, which encrypted them with a current key: left as written.
    skipped: int


async def create_key(engine: AsyncEngine, *, organization_id: str, name: str, permissions: Sequence[str]) -> CreatedKey:
    unknown = sorted(set(permissions) - set(api_keys.PERMISSIONS))
    if unknown:
        raise ValidationError(
            f"unknown permission {', '.join(unknown)}; expected any of: {', '.join(api_keys.PERMISSIONS)}"
        )
    if not organization_id.strip() or not name.strip():
        raise ValidationError("organization_id and name must not be empty")
    row, key = await api_keys.create_api_key(
        engine, organization_id=organization_id, name=name, permissions=list(permissions)
    )
    return CreatedKey(ApiKeyRecord.from_row(row), key)


async def list_keys(engine: AsyncEngine, *, organization_id: str | None = None) -> list[ApiKeyRecord]:
    """Every key (or one organisation's), oldest first, revoked ones included."""
    rows = await api_keys.list_api_keys(engine, organization_id=organization_id)
    return [ApiKeyRecord.from_row(row) for row in rows]


async def revoke_key(engine: AsyncEngine, *, key_id: str) -> None:
    """Revoke a key; requests with it are refused from then on."""
    if not await api_keys.revoke_api_key(engine, key_id=key_id):
        raise NotFoundError(f"no active key with id {key_id}")


async def rotate_credentials(
    engine: AsyncEngine,
    *,
    new_key: str,
    old_key: str,
    on_total: Callable[[int], None] | None = None,
    on_agent: Callable[[], None] | None = None,
) -> RotationResult:
    """Re-encrypt every agent's credentials from `old_key` to `new_key`, one agent per transaction, so an
    interrupted run loses nothing and a second run completes it (tokens already under `new_key` decrypt too).

    `on_total(n)` is told how many agents there are, `on_agent()` after each one. Raises when a token matches
    neither key; the agents before it stay rotated.
    """
    cipher = CredentialCipher([new_key, old_key])
    tokens = await all_credential_tokens(engine)
    if on_total is not None:
        on_total(len(tokens))
    rotated = skipped = 0
    for agent_id, token in tokens:
        try:
            new = cipher.rotate(token)
        except CredentialDecryptionError as exc:
            raise ExternalAgentsError(
                f"agent {agent_id}: its credentials match neither key; nothing after it was changed"
            ) from exc
        if await replace_credential_token(engine, agent_id=agent_id, old=token, new=new):
            rotated += 1
        else:
            skipped += 1
        if on_agent is not None:
            on_agent()
    return RotationResult(rotated=rotated, skipped=skipped)


async def archive_old_records(
    engine: AsyncEngine,
    *,
    archive_dir: Path,
    lineage_days: int,
    billing_months: int,
    batch_size: int,
    now: datetime,
    on_totals: Callable[[dict[str, int]], None] | None = None,
    on_batch: retention.OnBatch | None = None,
) -> list[retention.RetentionResult]:
    """Archive lineage older than `lineage_days` and billing usage older than `billing_months` (see
    stores.retention). `on_totals` is told how many rows of each table are due before the first batch is
    written, `on_batch(table, rows)` after each batch."""
    cutoffs = retention.retention_cutoffs(now, lineage_days=lineage_days, billing_months=billing_months)
    if on_totals is not None:
        on_totals(
            {
                target.table: await retention.count_expired(engine, target=target, cutoff=cutoff)
                for target, cutoff in cutoffs.items()
            }
        )
    return await retention.run_retention(
        engine,
        archive_dir=archive_dir,
        lineage_days=lineage_days,
        billing_months=billing_months,
        batch_size=batch_size,
        now=now,
        on_batch=on_batch,
    )


@dataclass(frozen=True)
class ReconcileResult:
    checks: list[reconcile.CounterCheck]

    @property
    def drifted(self) -> list[reconcile.CounterCheck]:
        return [check for check in self.checks if check.drifted]

    @property
    def unrepaired(self) -> list[reconcile.CounterCheck]:
        return [check for check in self.drifted if not check.repaired]


async def reconcile_counters(
    engine: AsyncEngine, *, organization_id: str | None, repair: bool, now: datetime
) -> ReconcileResult:
    """Compare each agent's current day and month counters with billing plus live reservations (see
    stores.reconcile); with `repair`, set every drifted counter to that sum."""
    if organization_id is not None and not organization_id.strip():
        raise ValidationError("organization_id must not be empty")
    checks = await reconcile.check_counters(engine, organization_id=organization_id, now=now, repair=repair)
    return ReconcileResult(checks)
