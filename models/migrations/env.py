"""Alembic environment: migrates the database to `models.METADATA`, the schema derived from the model declarations.

`models.migrate` builds the Alembic `Config` in code (there is no alembic.ini) and hands over, in
`config.attributes`, the open `connection` (inside its transaction) and the `report` callback revisions
announce their steps through. A dry run is Alembic's offline mode: the SQL, compiled for that connection's
dialect, goes to the config's output buffer, while revisions still inspect the real database through the
connection so that they plan only what is missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from external_agents.models import METADATA

connection: sa.Connection = context.config.attributes["connection"]

if context.is_offline_mode():
    context.configure(url=connection.engine.url, target_metadata=METADATA, literal_binds=True)
else:
    context.configure(connection=connection, target_metadata=METADATA)

with context.begin_transaction():
    context.run_migrations()
