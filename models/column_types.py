"""SQLAlchemy column types with the seed's PostgreSQL types and the closest SQLite equivalents."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


class UTCDateTime(sa.types.TypeDecorator):
    """timestamptz on PostgreSQL; on SQLite, which keeps no zone, values are stored in UTC and read back aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def varchar(length: int = 255) -> sa.String:
    return sa.String(length)


JSONB = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TEXT = sa.Text()
DOUBLE = sa.Double()
INTEGER = sa.Integer()
BIGINT = sa.BigInteger()
BOOLEAN = sa.Boolean()
BYTEA = sa.LargeBinary()
TIMESTAMPTZ = UTCDateTime()
