"""The `external-agents` command line (Typer + Rich): the command tree, assembled from one module per topic.

- `agents.py`, `invocations.py` (invoke, governance), `policies.py`, `workflows.py`, `lineage.py`: the gateway
  commands, which run the same operations as the REST API and print the same results, in-process or against a
  running gateway with `--url` (see calls.py); `--json` prints the API's JSON response for scripts.
- `keys.py`, `server.py` (serve, migrate, rotate-key, mcp), `lineage retention`, `reconcile.py`: the
  operator's, in-process.
- `options.py`: `--url`, `--api-key`, `--org`, `--json`, declared once for every gateway command;
  `output.py`: tables, JSON, one-line errors and exit codes; `calls.py`: where a command runs and as whom.

Heavy packages (kailash, DataFlow, Nexus, SQLAlchemy, httpx) are imported inside the commands, so `--help`
answers at once.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from external_agents.channels.cli import invocations, reconcile, server
from external_agents.channels.cli.agents import agents_app
from external_agents.channels.cli.keys import keys_app
from external_agents.channels.cli.lineage import lineage_app
from external_agents.channels.cli.output import EXIT_UNAVAILABLE, fail
from external_agents.channels.cli.policies import policies_app
from external_agents.channels.cli.workflows import workflows_app


class _CommandGroup(TyperGroup):
    """Every command's way out when a service it needs is down: one line and exit 5, never a traceback.

    Commands report their own refusals; this catches what reaches the top (an operator command's database call,
    `serve`'s start-up checks) and says which service is not available.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            # Already reported (their context may hold the fault they report: it must not be reported twice).
            raise
        except Exception as exc:
            from external_agents.channels.cli.calls import unavailable_reason

            reason = unavailable_reason(exc)
            if reason is None:
                raise
            fail(reason, EXIT_UNAVAILABLE)


app = typer.Typer(
    cls=_CommandGroup,
    help="External Agents: the governed gateway to agents on external platforms.",
    no_args_is_help=True,
    # A traceback's local variables may hold an API key or credentials.
    pretty_exceptions_show_locals=False,
)
app.command()(server.serve)
app.command()(server.migrate)
app.add_typer(keys_app, name="keys")
app.command("rotate-key")(server.rotate_key)
app.add_typer(agents_app, name="agents")
app.command()(invocations.invoke)
app.command()(invocations.governance)
app.add_typer(policies_app, name="policies")
app.add_typer(workflows_app, name="workflows")
app.command("mcp")(server.mcp_command)
app.add_typer(lineage_app, name="lineage")
app.command()(reconcile.reconcile)


def main() -> None:
    app()
