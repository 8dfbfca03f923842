"""Workflows of lineage and compliance, built once at start-up and shared by every channel.

Each operation is one node (see nodes/lineage.py); the erasure writes its audit record itself, in the
transaction that redacts, so it needs no separate audit node. An export's workflow only prepares it: the
channel streams the rows afterwards with `nodes.lineage.export_chunks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kailash.workflow import Workflow
from kailash.workflow.builder import WorkflowBuilder
from sqlalchemy.ext.asyncio import AsyncEngine

import external_agents.nodes.lineage  # noqa: F401  (registers the nodes)

# Node ids, which are also the keys of each run's results.
LIST_NODE = "list_lineage"
GET_NODE = "get_lineage"
GRAPH_NODE = "lineage_graph"
EXPORT_NODE = "prepare_export"
USER_ACCESS_NODE = "user_lineage"
USER_ERASURE_NODE = "erase_user_lineage"


@dataclass(frozen=True)
class LineageWorkflows:
    list: Workflow
    get: Workflow
    graph: Workflow
    export: Workflow
    user_access: Workflow
    user_erasure: Workflow


def _single(node_type: str, node_id: str, config: dict, name: str) -> Workflow:
    builder = WorkflowBuilder()
    builder.add_node(node_type, node_id, config)
    return builder.build(name=name)


def build_lineage_workflows(*, engine: AsyncEngine) -> LineageWorkflows:
    with_engine = {"engine": engine}
    return LineageWorkflows(
        list=_single("ListLineageNode", LIST_NODE, with_engine, "list_lineage"),
        get=_single("GetLineageNode", GET_NODE, with_engine, "get_lineage"),
        graph=_single("LineageGraphNode", GRAPH_NODE, with_engine, "lineage_graph"),
        export=_single("PrepareLineageExportNode", EXPORT_NODE, {}, "prepare_lineage_export"),
        user_access=_single("GetUserLineageNode", USER_ACCESS_NODE, with_engine, "get_user_lineage"),
        user_erasure=_single("EraseUserLineageNode", USER_ERASURE_NODE, with_engine, "erase_user_lineage"),
    )
