"""A request's inputs to a host workflow, checked before it runs (`/api/workflows/{id}/execute`, MCP, the CLI).

Kailash validates a node's inputs only once the node runs, and reports a missing or wrong-typed input as a
fault (a 500 here); and any runtime input replaces the node's configured value of the same name, so a request
could swap a node's injected runner, engine or client for a string. Both are checked here against what each
node declares, so a bad request is a 400 naming `inputs.<node>.<parameter>` and nothing runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kailash.nodes.base import NodeParameter
from kailash.workflow import Workflow

from external_agents.errors import ValidationError
from external_agents.nodes.base import DEPENDENCY

# Declared types a JSON value can be checked against; anything else (object, Any) takes any value.
_JSON_TYPES: dict[type, tuple[type, ...]] = {
    str: (str,),
    bool: (bool,),
    int: (int,),
    float: (int, float),
    dict: (dict,),
    list: (list,),
}
_JSON_VALUES = (str, int, float, bool, dict, list, type(None))


def check_workflow_inputs(
    workflow: Workflow, node_inputs: Mapping[str, Mapping[str, Any]], *, set_by_gateway: Mapping[str, set[str]]
) -> None:
    """Raise ValidationError for the first input that is missing, of the wrong type or not the request's to set.

    `set_by_gateway`: per node id, the parameters the gateway fills in itself (the caller, the workflow id).
    """
    connected = {(c.target_node, c.target_input) for c in workflow.connections}
    for node_id in workflow.nodes:
        config = workflow.nodes[node_id].config
        given = node_inputs.get(node_id, {})
        own = set_by_gateway.get(node_id, set())
        for name, parameter in workflow.get_node(node_id).get_parameters().items():
            field = f"inputs.{node_id}.{name}"
            if name in given:
                if _injected(parameter, config.get(name)):
                    raise ValidationError(f"{field} is the node's injected dependency; a request cannot set it")
                _check_type(given[name], parameter, field=field)
            elif parameter.required and name not in config and name not in own and (node_id, name) not in connected:
                raise ValidationError(f"{field} is required")


def _injected(parameter: NodeParameter, configured: Any) -> bool:
    # Declared with `dependency(...)`, or a live object configured into the node by its host.
    return parameter.category == DEPENDENCY or not isinstance(configured, _JSON_VALUES)


def _check_type(value: Any, parameter: NodeParameter, *, field: str) -> None:
    accepted = _JSON_TYPES.get(parameter.type)  # type: ignore[call-overload]
    if accepted is None or (value is None and not parameter.required):
        return
    # bool is an int to Python, never to a caller.
    if (isinstance(value, bool) and parameter.type is not bool) or not isinstance(value, accepted):
        raise ValidationError(f"{field} must be {_TYPE_NAMES[parameter.type]}")


_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    dict: "an object",
    list: "an array",
}
