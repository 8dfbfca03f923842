"""Where a gateway command runs and as whom: the options every such command of the command line takes.

Shared by every module of the command line.
"""

from __future__ import annotations

from typing import Annotated

import typer

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="KAIZEN_URL",
        help="A running gateway's base URL; without it, run in-process.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="KAIZEN_API_KEY", help="The API key to act with.", show_default=False),
]
Org = Annotated[
    str | None,
    typer.Option("--org", help="In-process, without a key: act as an admin of this organisation.", show_default=False),
]
