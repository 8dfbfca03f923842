"""The base of the nodes an invocation crosses, and the one place its typed state meets Kailash's JSON.

Kailash passes only JSON between nodes. `InvocationStepNode` takes the `invocation` input as JSON, hands its
`step` a typed `Invocation`, and turns what the step returns back into JSON: `emit` and `read_outcome` are the
only conversions between the two at a node boundary.

A denial ends the pipeline's work but not the graph: the record step must still write it to lineage and the
rate-limit step still reports the agent's standing for the response headers. Kailash's conditional routing
(a SwitchNode under `skip_branches` after each deciding step, its deny branch joined to the record step)
costs a node execution per switch on every allowed call: measured on AsyncLocalRuntime, a four-step chain
took a median 0.27 ms with the early return below and 0.55 ms with two SwitchNodes. So a step that has nothing
to do after a denial says so with `runs_after_denial = False`, and this base passes the invocation on unread.
"""

from __future__ import annotations

from typing import Any, ClassVar

from kailash.nodes.base import NodeParameter

from external_agents.nodes.base import ExternalAgentNode
from external_agents.nodes.invocation_state import Invocation, InvocationOutcome

INVOCATION_OUTPUT = "invocation"
OUTCOME_OUTPUT = "outcome"


def invocation_input() -> NodeParameter:
    return NodeParameter(
        name="invocation",
        type=dict,
        required=True,
        description="The invocation so far: `Invocation.to_json()` (nodes/invocation_state.py), as the previous "
        "step outputs it on its `invocation` port.",
    )


def emit(state: Invocation | InvocationOutcome) -> dict[str, Any]:
    """A step's outputs: the invocation on `invocation`, or the final outcome on `outcome`."""
    if isinstance(state, InvocationOutcome):
        return {OUTCOME_OUTPUT: state.to_json()}
    return {INVOCATION_OUTPUT: state.to_json()}


def read_outcome(outputs: dict[str, Any]) -> InvocationOutcome:
    """The typed outcome from the outputs of the node that recorded the invocation."""
    return InvocationOutcome.from_json(outputs[OUTCOME_OUTPUT])


class InvocationStepNode(ExternalAgentNode):
    """One step of the invocation: declare `dependencies()`, implement `step`; JSON is handled here."""

    # Whether `step` runs for an invocation an earlier step denied.
    runs_after_denial: ClassVar[bool] = False

    def dependencies(self) -> dict[str, NodeParameter]:
        """The live objects the step needs, given in the node's config."""
        return {}

    def get_parameters(self) -> dict[str, NodeParameter]:
        return {**self.dependencies(), "invocation": invocation_input()}

    def get_output_schema(self) -> dict[str, NodeParameter]:
        return {
            INVOCATION_OUTPUT: NodeParameter(
                name=INVOCATION_OUTPUT,
                type=dict,
                required=False,
                description="The invocation after this step: `Invocation.to_json()`.",
            ),
            OUTCOME_OUTPUT: NodeParameter(
                name=OUTCOME_OUTPUT,
                type=dict,
                required=False,
                description="How the invocation ended, from the recording step: `InvocationOutcome.to_json()`.",
            ),
        }

    def validate_outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        # `emit` builds the outputs with `to_json`, from values that arrived as JSON, so they are JSON by
        # construction (tests/unit/test_invocation_state.py sends every field through json). Kailash's own check
        # serialises the whole invocation again at every step: 13 us a step measured, as much as the typed
        # conversion itself, on the governance decision's path.
        return outputs

    async def async_run(self, **kw: Any) -> dict[str, Any]:
        data = kw.pop("invocation")
        if data["denial"] is not None and not self.runs_after_denial:
            return {INVOCATION_OUTPUT: data}
        return emit(await self.step(Invocation.from_json(data), **kw))

    async def step(self, invocation: Invocation, **dependencies: Any) -> Invocation | InvocationOutcome:
        raise NotImplementedError
