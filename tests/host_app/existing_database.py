"""The host's database as it was before External Agents: its customers, and a billing_usage table with rows.

`python existing_database.py PATH` creates it as a SQLite file. billing_usage has the product's columns
without `external_agent_id`, which `external-agents migrate` adds while keeping every row.
"""

from __future__ import annotations

import sqlite3
import sys

# As the host's DataFlow model `Customer` (models/__init__.py) created it.
CUSTOMERS = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
CUSTOMER_ROWS = [("Ada", "pro", "2025-01-02 03:04:05"), ("Grace", "free", "2025-02-03 04:05:06")]
BILLING_ROWS = [
    ("u-1", "host-org", "workflow", 1.0, 0.1),
    ("u-2", "host-org", "tokens", 1234.5, 0.2),
    ("u-3", "other-org", "workflow", 3.0, 123.456789),
]


def create(path: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(CUSTOMERS)
        connection.execute(BILLING_USAGE)
        connection.executemany(
            "INSERT INTO customers (name, plan, created_at, updated_at) VALUES (?, ?, ?, ?)",
            [(name, plan, at, at) for name, plan, at in CUSTOMER_ROWS],
        )
        connection.executemany(
            "INSERT INTO billing_usage (id, organization_id, usage_type, quantity, cost_usd) VALUES (?, ?, ?, ?, ?)",
            BILLING_ROWS,
        )
    connection.close()


if __name__ == "__main__":
    create(sys.argv[1])
