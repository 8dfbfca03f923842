"""What the channels derive from a field set declared once as a pydantic model (agent limits, lineage filters, graph
selectors): MCP tool parameters and command-line options.

Both the MCP SDK and typer build their schemas from a function's signature, so a field set reaches them as
`inspect.Parameter`s spliced into a signature by `with_parameters`; the function receives the values as keyword
arguments. Adding a field to the model adds the parameter, the option and its help, with nothing written out
again. typer is imported only when a command-line option is built, so the API never loads it.

    @with_parameters(tool_parameters(LineageFilterParams))
    async def list_lineage(self, ctx: Context, **filters: str | None) -> JsonObject: ...

    @lineage_app.command("list")
    @with_parameters(typer_parameters(cli_options(LineageFilterParams)))
    def list_command(url: Url = None, **filters: str | None) -> None: ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, get_args

import annotated_types
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])
Number = int | float


@dataclass(frozen=True)
class CliFlag:
    """Field metadata: the field's command-line flag, when it is not `--` and its name with dashes."""

    flag: str


@dataclass(frozen=True)
class CliOption:
    """One command-line option derived from a field: its parameter name, flag, type, help and bounds."""

    name: str
    flag: str
    annotation: Any
    help: str
    min: Number | None = None
    max: Number | None = None

    def typer_parameter(self) -> inspect.Parameter:
        """A keyword-only parameter annotated with its `typer.Option`; None (not given) by default."""
        import typer

        option = typer.Option(self.flag, min=self.min, max=self.max, help=self.help, show_default=False)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[self.annotation, option]
        )


def _fields(model: type[BaseModel], names: Iterable[str] | None) -> dict[str, FieldInfo]:
    fields = model.model_fields
    return dict(fields) if names is None else {name: fields[name] for name in names}


def _nullable(annotation: Any) -> Any:
    """The type, or None: an option or optional parameter left out is None."""
    return annotation if annotation is Any or type(None) in get_args(annotation) else annotation | None


def _bounds(field: FieldInfo) -> tuple[Number | None, Number | None]:
    low = high = None
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = item.ge
        elif isinstance(item, annotated_types.Le):
            high = item.le
    return low, high


def cli_options(model: type[BaseModel], *, names: Iterable[str] | None = None) -> tuple[CliOption, ...]:
    """The model's fields (or just `names`) as command-line options, in declaration order.

    The flag is the field's `CliFlag` or `--` and its name with dashes; the help is its description; inclusive
    bounds (`ge`, `le`) become the option's min and max, so the command line refuses what the API would.
    """
    options = []
    for name, field in _fields(model, names).items():
        flag = next((item.flag for item in field.metadata if isinstance(item, CliFlag)), None)
        low, high = _bounds(field)
        options.append(
            CliOption(
                name=name,
                flag=flag or f"--{name.replace('_', '-')}",
                annotation=_nullable(field.annotation),
                help=field.description or "",
                min=low,
                max=high,
            )
        )
    return tuple(options)


def typer_parameters(options: Iterable[CliOption]) -> list[inspect.Parameter]:
    return [option.typer_parameter() for option in options]


def tool_parameters(
    model: type[BaseModel],
    *,
    names: Iterable[str] | None = None,
    descriptions: Mapping[str, str] | None = None,
    schema_extra: Mapping[str, dict[str, Any]] | None = None,
) -> list[inspect.Parameter]:
    """The model's fields (or just `names`) as keyword-only MCP tool parameters with the same types, bounds and
    descriptions, required ones first; a field with a default is optional and None when left out.

    `descriptions` and `schema_extra` add what only the tool's caller needs (an enum of platforms the model's
    layer cannot import, say).
    """
    descriptions = descriptions or {}
    schema_extra = schema_extra or {}
    parameters = []
    for name, field in _fields(model, names).items():
        described = Field(
            description=descriptions.get(name, field.description), json_schema_extra=schema_extra.get(name)
        )
        required = field.is_required()
        annotation = Annotated[
            (field.annotation if required else _nullable(field.annotation), *field.metadata, described)
        ]
        default = inspect.Parameter.empty if required else None
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return parameters


def with_parameters(parameters: Iterable[inspect.Parameter]) -> Callable[[F], F]:
    """Give a function taking `**fields` these keyword-only parameters in its signature instead.

    Only the function's `__signature__` is set (so decorate each function once): the MCP SDK and typer read the
    signature and call the function with keyword arguments, which land in `**fields`.
    """
    extra = list(parameters)

    def decorate(function: F) -> F:
        signature = inspect.signature(function, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(kept) == len(signature.parameters):
            raise TypeError(f"{function.__name__} must take **fields to receive the derived parameters")
        function.__signature__ = signature.replace(parameters=[*kept, *extra])  # type: ignore[attr-defined]
        # Decorators that read type hints (typer, the CLI's gateway_command) find the derived parameters too.
        function.__annotations__ = {**function.__annotations__, **{p.name: p.annotation for p in extra}}
        return function

    return decorate
