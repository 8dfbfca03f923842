"""The `external-agents` command line (Typer + Rich).

Heavy packages (kailash, DataFlow, Nexus, SQLAlchemy) are imported inside the commands, so `--help` answers
at once.

The gateway commands (`agents`, `invoke`, `governance`, `policies`, `workflows`) run the same workflows as
the REST API and print the same results, in one of two modes:
- in-process, against the configured database (DATABASE_URL, ...), as the caller whose key `--api-key` or
  KAIZEN_API_KEY gives; or, for an operator with database access and no key, with `--org ORG`, as an admin of
  that organisation (recorded as actor "cli-operator"); `--org` wins over a key;
- against a running gateway with `--url` (or KAIZEN_URL) and the key, over HTTP.
`--json` prints the API's JSON response (on a refusal, its error body) for scripts; otherwise tables.
`lineage list|graph` (channels/cli/lineage.py) work the same way; `lineage export` and `lineage retention`
run in-process only, with `--org` for export.

Exit codes: 0 done; 1 the operation failed (a permission refusal, a conflict, a failed delivery, a fault);
2 bad arguments or configuration (invalid JSON, a missing option, a value the API refuses, an invalid key);
3 not found; 4 refused by governance (policy 403, budget 402, rate limit 429).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from external_agents.channels.cli.lineage import lineage_app
from external_agents.channels.cli.options import ApiKey, Org, Url

if TYPE_CHECKING:
    from rich.table import Table

    from external_agents.app_state import AppState
    from external_agents.channels.remote_client import GatewayError, RemoteGateway
    from external_agents.gateway.operations import LocalGateway
    from external_agents.settings import Settings
    from external_agents.stores.api_keys import Caller

    # The two have the same methods, arguments and results.
    Gateway = LocalGateway | RemoteGateway

T = TypeVar("T")

app = typer.Typer(
    help="External Agents: the governed gateway to agents on external platforms.",
    no_args_is_help=True,
    # A traceback's local variables may hold an API key or credentials.
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
agents_app = typer.Typer(help="Register, list, inspect, change and remove external agents.", no_args_is_help=True)
policies_app = typer.Typer(help="Manage the organisation's ABAC policies.", no_args_is_help=True)
workflows_app = typer.Typer(help="List and run the host application's workflows.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(agents_app, name="agents")
app.add_typer(policies_app, name="policies")
app.add_typer(workflows_app, name="workflows")
app.add_typer(lineage_app, name="lineage")

console = Console()
errors = Console(stderr=True)

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4

AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON response, for scripts.")]
JSON_HELP = "JSON, or @FILE to read it from a file"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # Text, not markup: messages carry user input and API details that may contain "[...]".
    errors.print(Text.assemble(("error: ", "red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings_or_exit(*, embedded_key: bool = False) -> Settings:
    from external_agents.settings import SettingsError, load_settings

    try:
        return load_settings(embedded_key=embedded_key)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            errors.print(line, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def _with_engine(settings: Settings, work: Any) -> Any:
    from external_agents.stores.database import create_engine

    engine = create_engine(settings)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


def parse_json(option: str, raw: str) -> Any:
    """The value of a JSON option (or of the file named by `@FILE`, which keeps credentials out of shell history)."""
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"{option}: cannot read {raw[1:]}: {exc.strerror}", EXIT_CONFIG)
    from external_agents.errors import ValidationError
    from external_agents.request_models import load_json

    try:
        return load_json(raw)
    except json.JSONDecodeError as exc:
        fail(
            f"{option}: not valid JSON ({exc.msg} at position {exc.pos}); quote text as JSON, e.g. '\"hello\"'",
            EXIT_CONFIG,
        )
    except ValidationError as exc:
        fail(f"{option}: {exc.detail}", EXIT_CONFIG)


def parse_json_object(option: str, raw: str) -> dict[str, Any]:
    value = parse_json(option, raw)
    if not isinstance(value, dict):
        fail(f'{option}: must be a JSON object, e.g. \'{{"key": "value"}}\'', EXIT_CONFIG)
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def cell(value: Any) -> Text:
    """A table cell as plain text (values are user input and may contain Rich markup)."""
    if value is None:
        return Text("")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, ensure_ascii=False))
    return Text(str(value))


def key_value_table(values: dict[str, Any], *, title: str | None = None) -> Table:
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for key, value in values.items():
        table.add_row(Text(key, style="bold"), cell(value))
    return table


# Gateway commands: where they run, exit codes, messages


@dataclass(frozen=True)
class Target:
    """Where a gateway command runs: `url` (remote) or in-process; as `api_key`'s caller, or as `org`'s admin."""

    url: str | None
    api_key: str | None
    org: str | None


def target(*, url: str | None, api_key: str | None, org: str | None) -> Target:
    if url:
        if org:
            fail("--org works in-process only; with --url give --api-key (or KAIZEN_API_KEY)", EXIT_CONFIG)
        if not api_key:
            fail("--url needs --api-key (or KAIZEN_API_KEY)", EXIT_CONFIG)
        return Target(url=url.rstrip("/"), api_key=api_key, org=None)
    if org is not None:
        if not org.strip():
            fail("--org must not be empty", EXIT_CONFIG)
        return Target(url=None, api_key=None, org=org)
    if not api_key:
        fail("give --api-key (or set KAIZEN_API_KEY), or --org ORG to act as an organisation's admin", EXIT_CONFIG)
    return Target(url=None, api_key=api_key, org=None)


def exit_code_for(error: GatewayError) -> int:
    status = error.status_code
    if status in (402, 429) or (status == 403 and "policy_id" in error.body):
        return EXIT_DENIED
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (400, 401, 413):
        return EXIT_CONFIG
    return EXIT_FAILED


def describe(error: GatewayError) -> str:
    """The refusal in one line: REST's detail, then what to do about it."""
    body = error.body
    extras = []
    if body.get("policy_id"):
        extras.append(f"policy {body['policy_id']}")
    if body.get("retry_after_seconds") is not None:
        extras.append(f"retry after {body['retry_after_seconds']} s")
    if body.get("budget_limit") is not None:
        extras.append(f"${body['budget_remaining']} of ${body['budget_limit']} left")
    if body.get("invocation_id"):
        extras.append(f"invocation {body['invocation_id']}")
    detail = error.detail or f"HTTP {error.status_code}"
    return f"{detail} ({'; '.join(extras)})" if extras else detail


async def _local_caller(state: AppState, where: Target) -> Caller:
    from external_agents.channels.remote_client import GatewayError
    from external_agents.gateway.operations import operator_caller
    from external_agents.stores.api_keys import authenticate

    if where.org:
        return operator_caller(where.org)
    assert where.api_key is not None
    try:
        caller = await authenticate(state.engine, where.api_key)
    except Exception as exc:
        detail = f"cannot check the API key against the database ({type(exc).__name__}): is it reachable and migrated?"
        raise GatewayError(503, {"status_code": 503, "detail": detail}) from None
    if caller is None:
        raise GatewayError(
            401, {"status_code": 401, "detail": "Invalid or revoked API key", "error_code": "UNAUTHORIZED"}
        )
    return caller


async def _call(where: Target, settings: Settings | None, operation: Callable[[Gateway], Awaitable[T]]) -> T:
    if where.url:
        import httpx

        from external_agents.channels.remote_client import RemoteGateway

        # Deliveries may take the platform's timeout times the retries: no read timeout of our own.
        timeout = httpx.Timeout(10.0, read=None)
        headers = {"Authorization": f"Bearer {where.api_key}"}
        async with httpx.AsyncClient(base_url=where.url, headers=headers, timeout=timeout) as client:
            return await operation(RemoteGateway(client))
    import logging

    from external_agents.app_state import build_state
    from external_agents.gateway.operations import LocalGateway
    from external_agents.nexus_app import configure_logging

    assert settings is not None
    # Refusals are reported in one line by `call`; the engine's own error lines would repeat them.
    configure_logging(logging.WARNING)
    state = build_state(settings)
    try:
        return await operation(LocalGateway(state, await _local_caller(state, where)))
    finally:
        await state.aclose()


def call(where: Target, operation: Callable[[Gateway], Awaitable[T]], *, as_json: bool) -> T:
    """Run one gateway operation where `where` says; a refusal exits with its code and one line."""
    from external_agents.channels.remote_client import GatewayError

    # Credentials are decrypted in-process on invocation: read the development key file as `serve` does.
    settings = None if where.url else settings_or_exit(embedded_key=True)
    try:
        return run(_call(where, settings, operation))
    except GatewayError as exc:
        if as_json:
            emit_json(exc.body)
        fail(describe(exc), exit_code_for(exc))
    except Exception as exc:
        # Its text may carry a driver's message with user data: the type says enough to start looking.
        fail(f"the operation failed unexpectedly ({type(exc).__name__})")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Processes sharing the port (more than 1 needs REDIS_URL).", min=1)] = 1,
) -> None:
    """Run the REST API with the MCP server at /mcp and Prometheus metrics at /metrics."""
    settings = settings_or_exit(embedded_key=True)
    from external_agents.nexus_app import serve as serve_app
    from external_agents.settings import SettingsError

    try:
        serve_app(host=host, port=port, workers=workers, settings=settings)
    except SettingsError as exc:
        fail(str(exc), EXIT_CONFIG)


@app.command()
def migrate(
    show_status: Annotated[bool, typer.Option("--status", help="Report what is applied; change nothing.")] = False,
    rollback: Annotated[bool, typer.Option("--rollback", help="Remove everything this feature added.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the SQL; change nothing.")] = False,
) -> None:
    """Create or extend the feature's tables (idempotent), report their state, or roll them back."""
    if show_status and rollback:
        fail("--status and --rollback cannot be combined", EXIT_CONFIG)
    settings = settings_or_exit()
    from external_agents.models import migrate as migrations

    def report(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    try:
        if show_status:
            current = migrations.status(settings)
            report(
                f"State: {current.state} (revision {current.current_revision or 'none'}, head {current.head_revision})"
            )
            for item in current.objects:
                report(f"{'✅' if item.present else '❌'} {item.schema_object.label}")
            return
        if rollback:
            migrations.rollback(settings, dry_run=dry_run, report=report)
        else:
            migrations.upgrade(settings, dry_run=dry_run, report=report)
    except Exception as exc:
        fail(f"migration failed, nothing was changed: {type(exc).__name__}: {exc}")


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
    from external_agents.stores.api_keys import PERMISSIONS, create_api_key

    permissions = permission or ["admin"]
    unknown = sorted(set(permissions) - set(PERMISSIONS))
    if unknown:
        fail(f"unknown permission {', '.join(unknown)}; expected any of: {', '.join(PERMISSIONS)}", EXIT_CONFIG)
    if not org.strip() or not name.strip():
        fail("--org and --name must not be empty", EXIT_CONFIG)

    async def create(engine: Any) -> tuple[dict[str, Any], str]:
        return await create_api_key(engine, organization_id=org, name=name, permissions=permissions)

    row, key = run(_with_engine(settings, create))
    console.print(
        f"Created key {row['id']} for organization {org} with {', '.join(row['permissions'])}", highlight=False
    )
    # The key alone on the last line, unstyled, so scripts can take it with `tail -1`.
    sys.stdout.write(key + "\n")


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """List API keys (never the keys themselves)."""
    settings = settings_or_exit()
    from rich.table import Table

    from external_agents.stores.api_keys import list_api_keys

    async def listing(engine: Any) -> list[dict[str, Any]]:
        return await list_api_keys(engine, organization_id=org)

    rows = run(_with_engine(settings, listing))
    shown = [
        {
            "id": r["id"],
            "organization_id": r["organization_id"],
            "name": r["name"],
            "prefix": r["key_prefix"],
            "permissions": r["permissions"],
            "created_at": r["created_at"].isoformat(),
            "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
        }
        for r in rows
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
    from external_agents.stores.api_keys import revoke_api_key

    async def revoke(engine: Any) -> bool:
        return await revoke_api_key(engine, key_id=key_id)

    if not run(_with_engine(settings, revoke)):
        fail(f"no active key with id {key_id}")
    console.print(f"Revoked key {key_id}", highlight=False)


@app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every agent's credentials from EXTERNAL_AGENT_ENCRYPTION_KEY to EXTERNAL_AGENT_ENCRYPTION_KEY_NEW.

    Each agent is swapped in its own transaction, so an interrupted run loses nothing: run it again.
    """
    settings = settings_or_exit(embedded_key=True)
    if not settings.external_agent_encryption_key_new:
        fail("set EXTERNAL_AGENT_ENCRYPTION_KEY_NEW to the new key first", EXIT_CONFIG)
    from rich.progress import Progress

    from external_agents.credential_cipher import CredentialCipher, CredentialDecryptionError
    from external_agents.stores.agents import all_credential_tokens, replace_credential_token

    cipher = CredentialCipher(
        [settings.external_agent_encryption_key_new, settings.external_agent_encryption_key or ""]
    )

    async def rotate(engine: Any) -> tuple[int, int]:
        tokens = await all_credential_tokens(engine)
        rotated = skipped = 0
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("Re-encrypting credentials", total=len(tokens))
            for agent_id, token in tokens:
                try:
                    new = cipher.rotate(token)
                except CredentialDecryptionError:
                    fail(f"agent {agent_id}: its credentials match neither key; nothing after it was changed")
                if await replace_credential_token(engine, agent_id=agent_id, old=token, new=new):
                    rotated += 1
                else:
                    skipped += 1  # changed meanwhile by a PATCH, which encrypted it with a current key
                progress.advance(task)
        return rotated, skipped

    rotated, skipped = run(_with_engine(settings, rotate))
    console.print(
        f"Re-encrypted {rotated} agent(s); {skipped} changed meanwhile and were left as written. "
        "Now set EXTERNAL_AGENT_ENCRYPTION_KEY to the new key and unset EXTERNAL_AGENT_ENCRYPTION_KEY_NEW.",
        highlight=False,
    )


# Agents

AgentIdArg = Annotated[str, typer.Argument(help="The agent's id (from `agents list`).", show_default=False)]
Description = Annotated[str | None, typer.Option("--description", help="What the agent does.", show_default=False)]
AuthConfig = Annotated[
    str | None,
    typer.Option(
        "--auth-config",
        help=f"{{auth_type, credentials}} as {JSON_HELP} (keeps credentials out of shell history). Default: none.",
        show_default=False,
    ),
]
MonthlyCost = Annotated[float | None, typer.Option("--max-monthly-cost", min=0, help="USD.", show_default=False)]
DailyCost = Annotated[float | None, typer.Option("--max-daily-cost", min=0, help="USD.", show_default=False)]
CostPerCall = Annotated[
    float | None, typer.Option("--cost-per-execution", min=0, help="USD, estimated per call.", show_default=False)
]
PerMinute = Annotated[int | None, typer.Option("--requests-per-minute", min=1, show_default=False)]
PerHour = Annotated[int | None, typer.Option("--requests-per-hour", min=1, show_default=False)]
PerDay = Annotated[int | None, typer.Option("--requests-per-day", min=1, show_default=False)]
DailyExecutions = Annotated[
    int | None,
    typer.Option("--daily-execution-limit", min=1, help="Invocations per UTC day. Default: none.", show_default=False),
]
MonthlyExecutions = Annotated[
    int | None,
    typer.Option(
        "--monthly-execution-limit", min=1, help="Invocations per UTC month. Default: none.", show_default=False
    ),
]


def _agent_fields(
    *,
    description: str | None,
    auth_config: str | None,
    max_monthly_cost: float | None,
    max_daily_cost: float | None,
    cost_per_execution: float | None,
    requests_per_minute: int | None,
    requests_per_hour: int | None,
    requests_per_day: int | None,
    daily_execution_limit: int | None,
    monthly_execution_limit: int | None,
) -> dict[str, Any]:
    """The optional agent fields given on the command line (absent ones are left to the defaults or unchanged)."""
    fields: dict[str, Any] = {
        "description": description,
        "auth_config": parse_json_object("--auth-config", auth_config) if auth_config is not None else None,
        "max_monthly_cost": max_monthly_cost,
        "max_daily_cost": max_daily_cost,
        "cost_per_execution": cost_per_execution,
        "requests_per_minute": requests_per_minute,
        "requests_per_hour": requests_per_hour,
        "requests_per_day": requests_per_day,
        "daily_execution_limit": daily_execution_limit,
        "monthly_execution_limit": monthly_execution_limit,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _show_agent(agent: dict[str, Any], *, title: str) -> None:
    shown = {k: v for k, v in agent.items() if k != "governance"}
    console.print(key_value_table(shown, title=title))
    if agent.get("governance"):
        console.print(key_value_table(agent["governance"], title="governance"))


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Option("--name", help="Unique within the organisation.", show_default=False)],
    platform: Annotated[
        str,
        typer.Option("--platform", help="teams, slack, discord, telegram, notion or custom_http.", show_default=False),
    ],
    platform_config: Annotated[
        str,
        typer.Option("--platform-config", help=f"Where to deliver, as {JSON_HELP}.", show_default=False),
    ],
    auth_config: AuthConfig = None,
    description: Description = None,
    max_monthly_cost: MonthlyCost = None,
    max_daily_cost: DailyCost = None,
    cost_per_execution: CostPerCall = None,
    requests_per_minute: PerMinute = None,
    requests_per_hour: PerHour = None,
    requests_per_day: PerDay = None,
    daily_execution_limit: DailyExecutions = None,
    monthly_execution_limit: MonthlyExecutions = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Register an external agent; limits left out take the configured defaults."""
    body = {
        "name": name,
        "platform": platform,
        "platform_config": parse_json_object("--platform-config", platform_config),
        **_agent_fields(
            description=description,
            auth_config=auth_config,
            max_monthly_cost=max_monthly_cost,
            max_daily_cost=max_daily_cost,
            cost_per_execution=cost_per_execution,
            requests_per_minute=requests_per_minute,
            requests_per_hour=requests_per_hour,
            requests_per_day=requests_per_day,
            daily_execution_limit=daily_execution_limit,
            monthly_execution_limit=monthly_execution_limit,
        ),
    }
    where = target(url=url, api_key=api_key, org=org)
    agent = call(where, lambda gw: gw.create_agent(body), as_json=as_json)
    if as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Created agent {agent['id']}")


@agents_app.command("list")
def agents_list(
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Agents per page.")] = 20,
    platform: Annotated[str | None, typer.Option(help="Only agents on this platform.", show_default=False)] = None,
    search: Annotated[str | None, typer.Option(help="Text to look for in names.", show_default=False)] = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """List the organisation's agents with their monthly spend."""
    where = target(url=url, api_key=api_key, org=org)
    listing = call(
        where, lambda gw: gw.list_agents(page=page, limit=limit, platform=platform, search=search), as_json=as_json
    )
    if as_json:
        emit_json(listing)
        return
    from rich.table import Table

    table = Table("id", "name", "platform", "monthly budget", "spent", "usage %", "per minute")
    for agent in listing["items"]:
        table.add_row(
            *(
                cell(agent.get(key))
                for key in (
                    "id",
                    "name",
                    "platform",
                    "max_monthly_cost",
                    "current_monthly_cost",
                    "usage_percentage",
                    "requests_per_minute",
                )
            )
        )
    console.print(table)
    console.print(f"{len(listing['items'])} of {listing['total']} (page {listing['page']})", highlight=False)


@agents_app.command("get")
def agents_get(
    agent_id: AgentIdArg, url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False
) -> None:
    """Show one agent and its governance (spend, usage, invocations)."""
    where = target(url=url, api_key=api_key, org=org)
    agent = call(where, lambda gw: gw.get_agent(agent_id), as_json=as_json)
    if as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Agent {agent['id']}")


@agents_app.command("update")
def agents_update(
    agent_id: AgentIdArg,
    name: Annotated[str | None, typer.Option("--name", help="A new name.", show_default=False)] = None,
    platform_config: Annotated[
        str | None,
        typer.Option("--platform-config", help=f"A new delivery config, as {JSON_HELP}.", show_default=False),
    ] = None,
    auth_config: AuthConfig = None,
    description: Description = None,
    max_monthly_cost: MonthlyCost = None,
    max_daily_cost: DailyCost = None,
    cost_per_execution: CostPerCall = None,
    requests_per_minute: PerMinute = None,
    requests_per_hour: PerHour = None,
    requests_per_day: PerDay = None,
    daily_execution_limit: DailyExecutions = None,
    monthly_execution_limit: MonthlyExecutions = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Change some of an agent's fields; new credentials are encrypted again."""
    body = _agent_fields(
        description=description,
        auth_config=auth_config,
        max_monthly_cost=max_monthly_cost,
        max_daily_cost=max_daily_cost,
        cost_per_execution=cost_per_execution,
        requests_per_minute=requests_per_minute,
        requests_per_hour=requests_per_hour,
        requests_per_day=requests_per_day,
        daily_execution_limit=daily_execution_limit,
        monthly_execution_limit=monthly_execution_limit,
    )
    if name is not None:
        body["name"] = name
    if platform_config is not None:
        body["platform_config"] = parse_json_object("--platform-config", platform_config)
    if not body:
        fail("nothing to change: give at least one option (see --help)", EXIT_CONFIG)
    where = target(url=url, api_key=api_key, org=org)
    agent = call(where, lambda gw: gw.update_agent(agent_id, body), as_json=as_json)
    if as_json:
        emit_json(agent)
        return
    _show_agent(agent, title=f"Updated agent {agent['id']}")


@agents_app.command("delete")
def agents_delete(
    agent_id: AgentIdArg, url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False
) -> None:
    """Delete an agent; its lineage is kept. With --json nothing is printed (the API answers 204)."""
    where = target(url=url, api_key=api_key, org=org)
    call(where, lambda gw: gw.delete_agent(agent_id), as_json=as_json)
    if not as_json:
        console.print(Text(f"Deleted agent {agent_id}"))


# Invoking and governance


@app.command()
def invoke(
    agent_id: AgentIdArg,
    input_json: Annotated[
        str, typer.Option("--input", help=f"What to send, as {JSON_HELP} (text is '\"hello\"').", show_default=False)
    ],
    user_id: Annotated[str, typer.Option("--user-id", help="The end user's id.", show_default=False)],
    user_email: Annotated[str, typer.Option("--user-email", help="The end user's email.", show_default=False)],
    system: Annotated[str, typer.Option("--system", help="The calling system.", show_default=False)],
    session_id: Annotated[str, typer.Option("--session-id", help="The session or conversation.", show_default=False)],
    user_name: Annotated[str | None, typer.Option("--user-name", help="Display name.", show_default=False)] = None,
    trace_id: Annotated[
        str | None, typer.Option("--trace-id", help="trace_id of the invocation that led here.", show_default=False)
    ] = None,
    context: Annotated[
        str | None, typer.Option("--context", help=f"Attributes for policies, as {JSON_HELP}.", show_default=False)
    ] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", help=f"Metadata kept with the call, as {JSON_HELP}.", show_default=False)
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Invoke an agent on behalf of an external user, under governance (exit 4 when policy, budget or rate limit
    refuses it)."""
    body: dict[str, Any] = {"input": parse_json("--input", input_json)}
    if context is not None:
        body["context"] = parse_json_object("--context", context)
    if metadata is not None:
        body["metadata"] = parse_json_object("--metadata", metadata)
    identity = {
        "external_user_id": user_id,
        "external_user_email": user_email,
        "external_system": system,
        "external_session_id": session_id,
        "external_user_name": user_name,
        "external_trace_id": trace_id,
        "external_context": None,
    }
    where = target(url=url, api_key=api_key, org=org)
    result = call(where, lambda gw: gw.invoke(agent_id, identity=identity, body=body), as_json=as_json)
    if as_json:
        emit_json(result)
        return
    meta = result["metadata"]
    console.print(
        Text.assemble(
            (result["status"], "green"),
            f"  invocation {result['invocation_id']}  trace {result['trace_id']}  "
            f"${meta['cost_usd']}  {meta['duration_ms']} ms",
        )
    )
    console.print_json(json.dumps(result["output"], ensure_ascii=False))


@app.command()
def governance(
    agent_id: AgentIdArg, url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False
) -> None:
    """Show an agent's budget, rate-limit and policy status."""
    where = target(url=url, api_key=api_key, org=org)
    status = call(where, lambda gw: gw.governance_status(agent_id), as_json=as_json)
    if as_json:
        emit_json(status)
        return
    budget = status["budget"]
    console.print(key_value_table(budget, title=f"Budget of {status['external_agent_id']}"))
    rate_limit = {k: v for k, v in status["rate_limit"].items() if k != "current_usage"}
    rate_limit.update({f"used this {window}": n for window, n in status["rate_limit"]["current_usage"].items()})
    console.print(key_value_table(rate_limit, title="Rate limit"))
    policy = status["policy"]
    console.print(
        key_value_table(
            {
                "total policies": policy["total_policies"],
                "enabled": policy["enabled_policies"],
                "active": ", ".join(p.get("name") or p.get("policy_id", "") for p in policy["active_policies"]),
            },
            title="Policies",
        )
    )


# Policies

PolicyIdArg = Annotated[str, typer.Argument(help="The policy's id (from `policies list`).", show_default=False)]
PolicyDescription = Annotated[str | None, typer.Option("--description", show_default=False)]
Priority = Annotated[int | None, typer.Option("--priority", help="Higher is evaluated first.", show_default=False)]
PolicyAgent = Annotated[
    str | None,
    typer.Option("--agent-id", help="Only this agent (default: the whole organisation).", show_default=False),
]
Conditions = Annotated[
    str | None,
    typer.Option(
        "--conditions",
        help=f'A list of conditions, as {JSON_HELP}, e.g. \'[{{"type": "environment", "environments": ["prod"]}}]\'.',
        show_default=False,
    ),
]


def _conditions(raw: str | None) -> list[Any] | None:
    if raw is None:
        return None
    value = parse_json("--conditions", raw)
    if not isinstance(value, list):
        fail("--conditions: must be a JSON list of condition objects", EXIT_CONFIG)
    return value


def _policy_fields(
    *,
    name: str | None,
    effect: str | None,
    description: str | None,
    priority: int | None,
    enabled: bool | None,
    agent_id: str | None,
    conditions: str | None,
) -> dict[str, Any]:
    """The policy fields given on the command line (absent ones are left to the defaults or unchanged)."""
    fields = {
        "name": name,
        "effect": effect,
        "description": description,
        "priority": priority,
        "enabled": enabled,
        "external_agent_id": agent_id,
        "conditions": _conditions(conditions),
    }
    return {k: v for k, v in fields.items() if v is not None}


@policies_app.command("create")
def policies_create(
    name: Annotated[str, typer.Option("--name", show_default=False)],
    effect: Annotated[str, typer.Option("--effect", help="allow or deny.", show_default=False)],
    description: PolicyDescription = None,
    priority: Priority = None,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled", help="Whether it applies.")] = True,
    agent_id: PolicyAgent = None,
    conditions: Conditions = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Create a policy; it applies when all its conditions match."""
    body = _policy_fields(
        name=name,
        effect=effect,
        description=description,
        priority=priority,
        enabled=enabled,
        agent_id=agent_id,
        conditions=conditions,
    )
    where = target(url=url, api_key=api_key, org=org)
    policy = call(where, lambda gw: gw.create_policy(body), as_json=as_json)
    if as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Created policy {policy['policy_id']}"))


@policies_app.command("list")
def policies_list(
    agent_id: Annotated[
        str | None, typer.Option("--agent-id", help="Policies of this agent.", show_default=False)
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """List the organisation's policies."""
    where = target(url=url, api_key=api_key, org=org)
    listing = call(where, lambda gw: gw.list_policies(external_agent_id=agent_id), as_json=as_json)
    if as_json:
        emit_json(listing)
        return
    from rich.table import Table

    items = listing["items"] if isinstance(listing, dict) else listing
    table = Table("policy_id", "name", "effect", "priority", "enabled", "agent", "conditions")
    for policy in items:
        table.add_row(
            *(
                cell(policy.get(key))
                for key in ("policy_id", "name", "effect", "priority", "enabled", "external_agent_id", "conditions")
            )
        )
    console.print(table)


@policies_app.command("get")
def policies_get(
    policy_id: PolicyIdArg, url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False
) -> None:
    """Show one policy."""
    where = target(url=url, api_key=api_key, org=org)
    policy = call(where, lambda gw: gw.get_policy(policy_id), as_json=as_json)
    if as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Policy {policy['policy_id']}"))


@policies_app.command("update")
def policies_update(
    policy_id: PolicyIdArg,
    name: Annotated[str | None, typer.Option("--name", show_default=False)] = None,
    effect: Annotated[str | None, typer.Option("--effect", help="allow or deny.", show_default=False)] = None,
    description: PolicyDescription = None,
    priority: Priority = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled", show_default=False)] = None,
    agent_id: PolicyAgent = None,
    conditions: Conditions = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Change some of a policy's fields."""
    body = _policy_fields(
        name=name,
        effect=effect,
        description=description,
        priority=priority,
        enabled=enabled,
        agent_id=agent_id,
        conditions=conditions,
    )
    if not body:
        fail("nothing to change: give at least one option (see --help)", EXIT_CONFIG)
    where = target(url=url, api_key=api_key, org=org)
    policy = call(where, lambda gw: gw.update_policy(policy_id, body), as_json=as_json)
    if as_json:
        emit_json(policy)
        return
    console.print(key_value_table(policy, title=f"Updated policy {policy['policy_id']}"))


@policies_app.command("delete")
def policies_delete(
    policy_id: PolicyIdArg, url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False
) -> None:
    """Delete a policy. With --json nothing is printed (the API answers 204)."""
    where = target(url=url, api_key=api_key, org=org)
    call(where, lambda gw: gw.delete_policy(policy_id), as_json=as_json)
    if not as_json:
        console.print(Text(f"Deleted policy {policy_id}"))


# The host application's workflows


@workflows_app.command("list")
def workflows_list(url: Url = None, api_key: ApiKey = None, org: Org = None, as_json: AsJson = False) -> None:
    """List the workflows `workflows run` can execute."""
    where = target(url=url, api_key=api_key, org=org)
    listing = call(where, lambda gw: gw.list_workflows(), as_json=as_json)
    if as_json:
        emit_json(listing)
        return
    from rich.table import Table

    table = Table("workflow_id", "nodes")
    for item in listing["items"]:
        table.add_row(cell(item["workflow_id"]), cell(", ".join(item["nodes"])))
    console.print(table)


@workflows_app.command("run")
def workflows_run(
    workflow_id: Annotated[str, typer.Argument(help="The workflow's id (from `workflows list`).", show_default=False)],
    inputs: Annotated[
        str | None,
        typer.Option(
            "--inputs", help=f'Parameters by node id, as {JSON_HELP}, e.g. \'{{"greet": {{"name": "Ada"}}}}\'.'
        ),
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
    org: Org = None,
    as_json: AsJson = False,
) -> None:
    """Run one of the host application's workflows and print its outputs by node."""
    node_inputs = parse_json_object("--inputs", inputs) if inputs is not None else None
    where = target(url=url, api_key=api_key, org=org)
    result = call(where, lambda gw: gw.execute_workflow(workflow_id, node_inputs), as_json=as_json)
    if as_json:
        emit_json(result)
        return
    console.print(Text(f"{result['workflow_id']}: {result['status']}"))
    console.print_json(json.dumps(result["outputs"], ensure_ascii=False))


# MCP over stdio


@app.command("mcp")
def mcp_command(
    stdio: Annotated[
        bool, typer.Option("--stdio", help="Serve MCP on stdin/stdout (for a local AI assistant).")
    ] = False,
    api_key: ApiKey = None,
) -> None:
    """Serve the MCP tools on stdio, in-process, as the caller whose key KAIZEN_API_KEY holds.

    Over HTTP, `external-agents serve` already serves them at /mcp with the bearer key.
    """
    if not stdio:
        fail("only --stdio is served here; over HTTP, `external-agents serve` serves MCP at /mcp", EXIT_CONFIG)
    if not api_key:
        fail("set KAIZEN_API_KEY (or --api-key) to the API key the assistant acts with", EXIT_CONFIG)
    settings = settings_or_exit(embedded_key=True)
    from external_agents.channels.remote_client import GatewayError

    try:
        run(_serve_mcp_stdio(settings, Target(url=None, api_key=api_key, org=None)))
    except GatewayError as exc:
        fail(describe(exc), exit_code_for(exc))


async def _serve_mcp_stdio(settings: Settings, where: Target) -> None:
    import logging

    from external_agents.app_state import build_state
    from external_agents.channels.mcp_server import serve_stdio
    from external_agents.nexus_app import configure_logging

    # stdout carries the protocol: log lines go to stderr, and only warnings.
    configure_logging(logging.WARNING)
    state = build_state(settings)
    try:
        caller = await _local_caller(state, where)
        await state.start()
        await serve_stdio(state, caller)
    finally:
        await state.aclose()


def main() -> None:
    app()
