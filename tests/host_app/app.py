"""An existing Kailash app: its own `nodes/`, `errors.py` and `models/`, and a workflow served by Nexus.

tests/integration/test_embedding.py runs it from a fresh virtualenv where External Agents is installed from
its wheel, with this folder first on sys.path (so `nodes`, `errors` and `models` are the host's):

    python app.py PORT                           the host as it was before the feature
    python app.py PORT --with-external-agents    the same host with the feature added by one call

The README's "Embedding in an existing Kailash app" example is made of this file's lines (a test checks it).
"""

from __future__ import annotations

import sys

import nodes.greeting  # noqa: F401  (registers the host's GreetCustomerNode)
import uvicorn
from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder
from nexus import Nexus

from models import db


def build_greeting_workflow() -> Workflow:
    """The host's workflow: its customers (its own DataFlow model), each greeted by its own node."""
    builder = WorkflowBuilder()
    builder.add_node(db.get_node("CustomerListNode"), "customers", {"order_by": ["id"]})
    builder.add_node("GreetCustomerNode", "greet", {})
    builder.add_connection("customers", "records", "greet", "customers")
    return builder.build(name="greeting")


def main(port: int, *, with_external_agents: bool) -> None:
    app = Nexus(auto_discovery=False, enable_durability=False)  # your app, as it is
    greeting = build_greeting_workflow()
    app.register("greeting", greeting)  # still served at /workflows/greeting/execute, unchanged
    if with_external_agents:
        import external_agents
        from external_agents.settings import load_settings

        external_agents.install(app, load_settings(), workflows={"greeting": greeting})
    uvicorn.run(app.fastapi_app, host="127.0.0.1", port=port)


if __name__ == "__main__":
    main(int(sys.argv[1]), with_external_agents="--with-external-agents" in sys.argv[2:])
