"""An invocation record the database refused, made storable so the invocation is still recorded.

The platform already has the call when its record is written, so a record must not be lost because one of
its values is something the database will not take (a value our checks missed, a driver limit). When the
database refuses a record (stores.database.database_fault says "refused", not "unavailable"), it is written
once more in this form: every JSON value it cannot store kept as ASCII-escaped JSON text, every text stripped
of NUL and lone surrogates, and a note on the row naming the refusal. Costs, billing and audit rows are
unchanged, so lineage, billing and the budget still agree.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from external_agents.models import TABLES
from external_agents.storable_values import json_text, storable_output, storable_text
from external_agents.stores.unrecorded import InvocationRecord

_lineage = TABLES["invocation_lineage"]
_JSON_COLUMNS = frozenset(c.name for c in _lineage.c if isinstance(c.type, sa.JSON))
_TEXT_COLUMNS = frozenset(c.name for c in _lineage.c if isinstance(c.type, sa.String))


def storable_record(record: InvocationRecord, *, refusal: BaseException) -> InvocationRecord:
    """`record` with the lineage values a database may refuse replaced, and a note saying so."""
    row: dict[str, Any] = dict(record.lineage_row)
    for name in _JSON_COLUMNS & row.keys():
        value = row[name]
        if name == "output" and value is not None and not isinstance(value, str):
            # The output is the platform's: the likeliest culprit, kept as text whatever the checks said.
            row[name] = json_text(value)
        elif value is not None:
            row[name] = storable_output(value).value
    for name in _TEXT_COLUMNS & row.keys():
        if isinstance(row[name], str):
            row[name] = storable_text(row[name])
    note = f"the database refused the record ({type(refusal).__name__}); values it could not store kept as text"
    earlier = row.get("record_note")
    row["record_note"] = f"{earlier}; {note}" if earlier else note
    return replace(record, lineage_row=row)
