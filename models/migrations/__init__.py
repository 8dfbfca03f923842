"""The Alembic environment of the feature's schema; `models.migrate` is the API that runs it."""
