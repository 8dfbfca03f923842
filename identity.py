"""The external identity an invocation carries, and the HTTP headers it arrives in, declared once.

REST reads these headers and the command line's remote client sends them, both as UTF-8; the invocation
pipeline validates and records the fields they fill. This module imports nothing but the standard library, so the light
`--url` client can use it without loading the workflow engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class IdentityHeader:
    """One identity field and the header that carries it; a required one must be present before delivery."""

    field: str
    header: str
    required: bool


IDENTITY_HEADERS: tuple[IdentityHeader, ...] = (
    IdentityHeader("external_user_id", "X-External-User-ID", required=True),
    IdentityHeader("external_user_email", "X-External-User-Email", required=True),
    IdentityHeader("external_system", "X-External-System", required=True),
    IdentityHeader("external_session_id", "X-External-Session-ID", required=True),
    IdentityHeader("external_user_name", "X-External-User-Name", required=False),
    IdentityHeader("external_trace_id", "X-External-Trace-ID", required=False),
)
# A JSON object of attributes for policies; the invoke body's `context` wins over it key by key.
CONTEXT_HEADER = "X-External-Context"
MAX_IDENTITY_LENGTH = 255


def decode_header_value(value: str) -> str | None:
    """A header value as the UTF-8 text the client sent, or None when its bytes are not UTF-8.

    HTTP carries header values as bytes, and the ASGI server (through Starlette) hands them over decoded as
    latin-1, so `zoë@exämple.com` sent as UTF-8 would arrive as `zoÃ«@exÃ¤mple.com`. Re-encoding as latin-1
    gives back the exact bytes, which are then read as UTF-8.
    """
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None


def encode_header_value(value: str) -> bytes:
    """A header value as the UTF-8 bytes the REST API reads (HTTP clients default to ASCII, refusing `ë`)."""
    return value.encode("utf-8")


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Who the invocation is for, as the headers said; a field that was not sent is None."""

    external_user_id: str | None = None
    external_user_email: str | None = None
    external_system: str | None = None
    external_session_id: str | None = None
    external_user_name: str | None = None
    external_trace_id: str | None = None
    external_context: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, str | None]:
        """The header-borne fields by name (the context apart)."""
        return {header.field: getattr(self, header.field) for header in IDENTITY_HEADERS}

    def missing_header(self) -> str | None:
        """The first required header this identity lacks, if any."""
        return next((h.header for h in IDENTITY_HEADERS if h.required and getattr(self, h.field) is None), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "external_user_id": self.external_user_id,
            "external_user_email": self.external_user_email,
            "external_system": self.external_system,
            "external_session_id": self.external_session_id,
            "external_user_name": self.external_user_name,
            "external_trace_id": self.external_trace_id,
            "external_context": self.external_context,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        return cls(**data)
