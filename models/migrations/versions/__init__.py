"""Alembic revisions of the feature's schema (a package so that an installed copy ships them)."""
