"""`keys create|list|revoke`: the operator's API-key management, in-process on the configured database (no key
is needed to issue the first one). Each runs the gateway's administration operation of the same name."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from external_agents.channels.cli.calls import run_with_engine, settings_or_exit
from external_agents.channels.cli.output import EXIT_CONFIG, console, fail

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.gateway.administration import ApiKeyRecord, CreatedKey

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organisation the key belongs to.")],
    name: Annotated[str, typer.Option("--name", help="A name to recognise the key by.")],
    permission: Annotated[
        list[str] | None, typer.Option("--permission", "-p", help="Permission (repeatable); default: admin.")
    ] = None,
) -> None:
    """Create an API key; the key is printed once, as the last line."""
    settings = settings_or_exit()
    from external_agents.gateway.administration import create_key

    if not org.strip() or not name.strip():
        fail("--org and --name must not be empty", EXIT_CONFIG)

    async def create(engine: AsyncEngine) -> CreatedKey:
        return await create_key(engine, organization_id=org, name=name, permissions=permission or ["admin"])

    created = run_with_engine(settings, create)
    console.print(
        f"Created key {created.record.id} for organization {org} with {', '.join(created.record.permissions)}",
        highlight=False,
    )
    # The key alone on the last line, unstyled, so scripts can take it with `tail -1`.
    sys.stdout.write(created.key + "\n")


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """List API keys (never the keys themselves)."""
    settings = settings_or_exit()
    from rich.table import Table

    from external_agents.gateway.administration import list_keys

    async def listing(engine: AsyncEngine) -> list[ApiKeyRecord]:
        return await list_keys(engine, organization_id=org)

    shown = [
        {
            "id": key.id,
            "organization_id": key.organization_id,
            "name": key.name,
            "prefix": key.prefix,
            "permissions": list(key.permissions),
            "created_at": key.created_at.isoformat(),
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key in run_with_engine(settings, listing)
    ]
    if as_json:
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
        return
    table = Table("id", "organization", "name", "prefix", "permissions", "revoked")
    for r in shown:
        table.add_row(
            r["id"], r["organization_id"], r["name"], r["prefix"], ", ".join(r["permissions"]), r["revoked_at"] or ""
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke an API key; requests with it get 401 from then on."""
    settings = settings_or_exit()
    from external_agents.gateway.administration import revoke_key

    async def revoke(engine: AsyncEngine) -> None:
        await revoke_key(engine, key_id=key_id)

    run_with_engine(settings, revoke)
    console.print(f"Revoked key {key_id}", highlight=False)
