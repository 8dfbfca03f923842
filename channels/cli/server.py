"""The operator's commands for the server itself: `serve`, `migrate`, `rotate-key` and `mcp --stdio`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from external_agents.channels.cli.calls import (
    Target,
    describe,
    exit_code_for,
    local_caller,
    run,
    run_with_engine,
    settings_or_exit,
    unavailable_reason,
)
from external_agents.channels.cli.options import ApiKey
from external_agents.channels.cli.output import EXIT_CONFIG, EXIT_UNAVAILABLE, console, fail

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.settings import Settings


def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Processes sharing the port (more than 1 needs REDIS_URL).", min=1)] = 1,
) -> None:
    """Run the REST API with the MCP server at /mcp and Prometheus metrics at /metrics."""
    settings = settings_or_exit(embedded_key=True)
    from external_agents.nexus_app import StartupError
    from external_agents.nexus_app import serve as serve_app
    from external_agents.settings import SettingsError

    try:
        serve_app(host=host, port=port, workers=workers, settings=settings)
    except SettingsError as exc:
        fail(str(exc), EXIT_CONFIG)
    except StartupError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)


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
        reason = unavailable_reason(exc)
        if reason is not None:
            fail(reason, EXIT_UNAVAILABLE)
        # The first line only: a driver's message goes on with its SQL and a link.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(f"migration failed, nothing was changed: {type(exc).__name__}: {first_line}")


def rotate_key() -> None:
    """Re-encrypt every agent's credentials from EXTERNAL_AGENT_ENCRYPTION_KEY to EXTERNAL_AGENT_ENCRYPTION_KEY_NEW.

    Each agent is swapped in its own transaction, so an interrupted run loses nothing: run it again.
    """
    settings = settings_or_exit(embedded_key=True)
    if not settings.external_agent_encryption_key_new:
        fail("set EXTERNAL_AGENT_ENCRYPTION_KEY_NEW to the new key first", EXIT_CONFIG)
    new_key = settings.external_agent_encryption_key_new
    from rich.progress import Progress

    from external_agents.gateway.administration import RotationResult, rotate_credentials

    async def rotate(engine: AsyncEngine) -> RotationResult:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("Re-encrypting credentials", total=None)
            return await rotate_credentials(
                engine,
                new_key=new_key,
                old_key=settings.external_agent_encryption_key or "",
                on_total=lambda total: progress.update(task, total=total),
                on_agent=lambda: progress.advance(task),
            )

    result = run_with_engine(settings, rotate)
    console.print(
        f"Re-encrypted {result.rotated} agent(s); {result.skipped} changed meanwhile and were left as written. "
        "Now set EXTERNAL_AGENT_ENCRYPTION_KEY to the new key and unset EXTERNAL_AGENT_ENCRYPTION_KEY_NEW.",
        highlight=False,
    )


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
        # Checked once here to refuse a bad key in one line before the protocol starts, then on every call.
        await local_caller(state, where)
        await state.start()
        assert where.api_key is not None
        await serve_stdio(state, where.api_key)
    finally:
        await state.aclose()
