"""The host's database as it was before External Agents: its customers, and a billing_usage table with rows.

`python existing_database.py DATABASE_URL` creates both tables in an empty SQLite file or PostgreSQL
database. billing_usage has the product's columns without `external_agent_id`, which
`external-agents migrate` adds while keeping every row.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa

# As the host's DataFlow model `Customer` (models/__init__.py) has it on each database.
CUSTOMERS_ID = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "SERIAL PRIMARY KEY"}
CUSTOMERS = """
CREATE TABLE customers (
    id {id},
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT DEFAULT CURRENT_TIMESTAMP
)
"""
BILLING_USAGE = """
CREATE TABLE billing_usage (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    organization_id VARCHAR(255) NOT NULL,
    usage_type VARCHAR(50) NOT NULL,
    quantity DOUBLE PRECISION NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP NOT NULL
)
"""


def sync_url(url: str) -> sa.URL:
    """`url` with a driver this script has: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg (3)."""
    parsed = sa.make_url(url)
    return parsed.set(drivername="postgresql+psycopg2") if parsed.get_backend_name() == "postgresql" else parsed


CUSTOMER_ROWS = [
    {"name": "Ada", "plan": "pro", "at": "2025-01-02 03:04:05"},
    {"name": "Grace", "plan": "free", "at": "2025-02-03 04:05:06"},
]
BILLING_ROWS = [
    {"id": "u-1", "organization_id": "host-org", "usage_type": "workflow", "quantity": 1.0, "cost_usd": 0.1},
    {"id": "u-2", "organization_id": "host-org", "usage_type": "tokens", "quantity": 1234.5, "cost_usd": 0.2},
    {"id": "u-3", "organization_id": "other-org", "usage_type": "workflow", "quantity": 3.0, "cost_usd": 123.456789},
]


def create(url: str) -> None:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(CUSTOMERS.format(id=CUSTOMERS_ID[engine.dialect.name])))
            connection.execute(sa.text(BILLING_USAGE))
            connection.execute(
                sa.text("INSERT INTO customers (name, plan, created_at, updated_at) VALUES (:name, :plan, :at, :at)"),
                CUSTOMER_ROWS,
            )
            connection.execute(
                sa.text(
                    "INSERT INTO billing_usage (id, organization_id, usage_type, quantity, cost_usd) "
                    "VALUES (:id, :organization_id, :usage_type, :quantity, :cost_usd)"
                ),
                BILLING_ROWS,
            )
    finally:
        engine.dispose()


if __name__ == "__main__":
    create(sys.argv[1])
