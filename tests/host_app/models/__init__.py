"""The host's own DataFlow models, on the host's database (DATABASE_URL, shared with External Agents)."""

from __future__ import annotations

import os

from dataflow import DataFlow

db = DataFlow(
    os.environ["DATABASE_URL"],
    cache_enabled=False,
    enable_model_persistence=False,
    auto_migrate=False,
    migration_enabled=False,
)


@db.model
class Customer:
    """A customer of the host's product (table `customers`, created before External Agents was added)."""

    name: str
    plan: str
