"""The options every gateway command takes, declared once: `--url`, `--api-key`, `--org` and `--json`.

`@gateway_command` adds the four to a command's own options and hands the command one `GatewayOptions` (its
`gateway` parameter) in their place, so `external-agents agents list --url U --api-key K --json` reads as it
always has while no command repeats them. Where the command runs with them is `calls.py`'s business.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

from external_agents.channels.cli.calls import call, target

if TYPE_CHECKING:
    from external_agents.channels.cli.calls import Gateway

T = TypeVar("T")

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
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON response, for scripts.")]


@dataclass(frozen=True)
class GatewayOptions:
    """Where and as whom a command runs, and whether it prints JSON for scripts."""

    url: str | None
    api_key: str | None
    org: str | None
    as_json: bool

    def call(self, operation: Callable[[Gateway], Awaitable[T]]) -> T:
        """Run one gateway operation with these options; a refusal exits with its code and one line."""
        where = target(url=self.url, api_key=self.api_key, org=self.org)
        return call(where, operation, as_json=self.as_json)


# The options as the parameters Typer reads from a command's signature; `as_json` is spelled --json.
_OPTIONS = (
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Url),
    inspect.Parameter("api_key", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ApiKey),
    inspect.Parameter("org", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Org),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=AsJson),
)


def gateway_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(..., *, gateway: GatewayOptions)` the four options, after its own (see the docstring)."""
    hints = get_type_hints(command, include_extras=True)
    own = [
        parameter.replace(annotation=hints[name])
        for name, parameter in inspect.signature(command).parameters.items()
        if name != "gateway"
    ]

    def with_options(
        *args: Any, url: str | None, api_key: str | None, org: str | None, as_json: bool, **kw: Any
    ) -> None:
        command(*args, gateway=GatewayOptions(url=url, api_key=api_key, org=org, as_json=as_json), **kw)

    with_options.__name__ = command.__name__
    with_options.__qualname__ = command.__qualname__
    with_options.__doc__ = command.__doc__
    with_options.__module__ = command.__module__
    with_options.__signature__ = inspect.Signature([*own, *_OPTIONS])  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in (*own, *_OPTIONS)}
    return with_options
