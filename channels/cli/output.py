"""What the command line prints and how it exits: tables, JSON for scripts, one-line errors, exit codes, and the
JSON options it reads (or @FILE). Rich and Typer only: this module is loaded for `--help` too.

Exit codes: 0 done; 1 the operation failed (a permission refusal, a conflict, a failed delivery, a fault);
2 bad arguments or configuration (invalid JSON, a missing option, a value the API refuses, an invalid key);
3 not found; 4 refused by governance (policy 403, budget 402, rate limit 429); 5 a service it needs is not
available (the database or Redis cannot be reached, the database is not migrated, `serve`'s port is in use,
or a gateway answered 503): nothing is wrong with the command, run it again once that is fixed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from rich.table import Table

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4
EXIT_UNAVAILABLE = 5

JSON_HELP = "JSON, or @FILE to read it from a file"

console = Console()
errors = Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # Text, not markup: messages carry user input and API details that may contain "[...]".
    errors.print(Text.assemble(("error: ", "red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


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
