"""SQLAlchemy column types with the seed's PostgreSQL types and the closest SQLite equivalents."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles


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


class JSONDocument(sa.JSON):
    """JSON that SQLite keeps as text: a column typed JSON would get NUMERIC affinity there, and SQLite would turn
    a stored scalar such as 1.0 into the integer 1 and a 30-digit integer into a float."""

    cache_ok = True


@compiles(JSONDocument, "sqlite")
def _sqlite_text(_type: JSONDocument, _compiler: object, **_kw: object) -> str:
    return "TEXT"


# The seed's jsonb (agent configs); JSON_EXACT keeps PostgreSQL's json, which stores the text as sent, for values
# that must read back exactly (jsonb rewrites numbers: 1e308 would come back as an integer).
JSONB = JSONDocument().with_variant(postgresql.JSONB(), "postgresql")
JSON_EXACT = JSONDocument().with_variant(postgresql.JSON(), "postgresql")
TEXT = sa.Text()
DOUBLE = sa.Double()
INTEGER = sa.Integer()
BIGINT = sa.BigInteger()
BOOLEAN = sa.Boolean()
BYTEA = sa.LargeBinary()
TIMESTAMPTZ = UTCDateTime()
