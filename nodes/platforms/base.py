"""The one interface every platform adapter implements, and the data that crosses it.

Delivery is split in two so that the platform-specific part stays small and testable without a network: an
adapter turns a `DeliveryRequest` into an `OutgoingRequest` (the exact bytes the platform documents) and turns
the platform's answer into an output; `delivery.deliver` owns everything shared (URL checks, auth, timeouts,
retries, redaction). Adding a platform is one module with one `PlatformAdapter` subclass plus one line in the
registry in `nodes/platforms/__init__.py`.

The helpers below are shared by several adapters: config field validation with messages that name the field,
rendering an invocation's input as text, and truncation to a platform's character limits.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

import httpx

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.reported_cost import DEFAULT_MAX_REPORTED_COST_USD

ELLIPSIS = "…"

# RFC 9110 token characters; anything else cannot be a header name. Always fullmatch: `$` also matches before a
# trailing newline, which let "token\n" through.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# httpx encodes header values as ASCII; CR/LF would split headers, NUL ends them, and the other C0 controls,
# tab included, are never part of a credential (a token pasted with its tab or newline is a paste accident).
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
# C0 controls and DEL, refused in every secret even when it is not sent as a header (basic, HMAC, OAuth2
# client credentials): the same paste accident, and an error text quoting one would carry it.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Headers that the HTTP client owns; letting a config set them would corrupt framing or routing.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True)
class DeliveryRequest:
    """One invocation to deliver, with everything an adapter may put in the platform's payload."""

    invocation_id: str
    trace_id: str
    agent_id: str
    agent_name: str
    platform_config: dict[str, Any]
    auth_type: str
    auth_config: dict[str, Any]
    # Decrypted secrets; kept out of repr so a logged request never shows them.
    credentials: dict[str, Any] = field(repr=False)
    input: Any
    context: dict[str, Any]
    external_user_id: str | None
    external_user_email: str | None
    external_user_name: str | None
    external_system: str | None
    external_session_id: str | None


@dataclass(frozen=True)
class DeliveryOptions:
    """Delivery settings, taken from `Settings` by the caller so adapters never read configuration."""

    timeout_seconds: float
    retry_attempts: int
    allow_private_webhooks: bool
    allowed_webhook_domains: tuple[str, ...]
    backoff_base_seconds: float = 0.5
    max_retry_after_seconds: float = 30
    # A response becomes lineage output; an unbounded one would exhaust memory.
    max_response_bytes: int = 1_048_576
    # EXTERNAL_AGENT_MAX_REPORTED_COST_USD: a larger reported cost is ignored (reported_cost.py).
    max_reported_cost_usd: Decimal = DEFAULT_MAX_REPORTED_COST_USD

    def __post_init__(self) -> None:
        if self.timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if self.retry_attempts < 0:
            raise ValueError("retry_attempts must not be negative")


@dataclass(frozen=True)
class PlatformAnswer:
    """What an adapter reads from a platform's 2xx answer."""

    output: Any
    # The cost the platform reported, exactly as it wrote it (parsed strictly by delivery, see reported_cost.py).
    reported_cost: str | None = None
    # Why the output is not the platform's answer as parsed (kept as text, characters replaced), if it is not.
    note: str | None = None


@dataclass(frozen=True)
class DeliveryResult:
    status_code: int
    output: Any
    reported_cost: str | None
    attempts: int
    note: str | None = None


@dataclass(frozen=True)
class OutgoingRequest:
    """The exact request an adapter wants sent; `content` is the body byte for byte, which HMAC signs."""

    method: str
    # URLs and headers can carry secrets (a Telegram bot token, a Notion token); keep them out of repr.
    url: str = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    content: bytes = b""
    # A per-agent timeout; delivery never lets it exceed the global one.
    timeout_seconds: float | None = None

    @classmethod
    def json(
        cls,
        *,
        method: str,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
    ) -> OutgoingRequest:
        return cls(
            method=method,
            url=url,
            headers={"Content-Type": "application/json", **(headers or {})},
            content=encode_json(payload),
            timeout_seconds=timeout_seconds,
        )


class PlatformAdapter(ABC):
    """Formats an invocation for one platform and reads the platform's answer."""

    platform: ClassVar[str]
    # The platform_config field holding the URL that delivery sends to (checked against the URL policy).
    url_field: ClassVar[str]
    # Used when the config leaves `url_field` out (fixed public APIs such as Telegram's).
    default_url: ClassVar[str | None] = None
    # platform_config fields that are secrets, so a caller can mask them in responses and delivery can
    # scrub them from error texts.
    secret_fields: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        """Return the normalised config; raise ValidationError naming the bad field."""

    @abstractmethod
    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        """The platform's documented payload for this invocation."""

    @abstractmethod
    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        """The invocation output and the cost the platform reported (None when it reports none).

        Called for 2xx responses only; may raise PlatformError when a platform reports failure in a 2xx.
        """

    def retry_after(self, response: httpx.Response) -> float | None:
        """A retry delay the platform gives in its body rather than in a Retry-After header."""
        return None

    def endpoint(self, platform_config: Mapping[str, Any]) -> str:
        """The base URL delivery will contact, without secrets, for create-time URL checks."""
        url = platform_config.get(self.url_field) or self.default_url
        if not isinstance(url, str):
            raise ValidationError(f"platform_config.{self.url_field} is required")
        return url


def encode_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and non-JSON values are refused rather than sent as invalid JSON."""
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"input is not JSON-serialisable: {exc}") from exc


def check_fields(config: Mapping[str, Any], *, allowed: tuple[str, ...], prefix: str) -> None:
    """Refuse unknown fields so a typo ("chanel") is an error instead of being silently ignored."""
    for name in config:
        if name not in allowed:
            raise ValidationError(f"{prefix}.{name} is not a known field; expected one of: {', '.join(allowed)}")


def require_str(config: Mapping[str, Any], name: str, *, prefix: str = "platform_config") -> str:
    value = optional_str(config, name, prefix=prefix)
    if value is None:
        raise ValidationError(f"{prefix}.{name} is required")
    return value


def optional_str(
    config: Mapping[str, Any], name: str, *, prefix: str = "platform_config", max_length: int = 2048
) -> str | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{prefix}.{name} must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(f"{prefix}.{name} must be at most {max_length} characters")
    return value.strip()


def require_http_url(config: Mapping[str, Any], name: str, *, prefix: str = "platform_config") -> str:
    url = require_str(config, name, prefix=prefix)
    check_http_url(url, field=f"{prefix}.{name}")
    return url


def optional_http_url(config: Mapping[str, Any], name: str, *, prefix: str = "platform_config") -> str | None:
    url = optional_str(config, name, prefix=prefix)
    if url is not None:
        check_http_url(url, field=f"{prefix}.{name}")
    return url


def check_http_url(url: str, *, field: str) -> None:
    """Syntax only: an absolute http(s) URL with a host. The address policy is in `webhook_url`."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValidationError(f"{field} is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValidationError(f"{field} must be an absolute http(s) URL")


def validate_headers(headers: Any, *, field: str) -> dict[str, str]:
    """A dict of header names to ASCII values that the HTTP client can send unchanged."""
    if not isinstance(headers, dict):
        raise ValidationError(f"{field} must be an object of header names to string values")
    for name, value in headers.items():
        check_header_name(name, field=field)
        if not isinstance(value, str):
            raise ValidationError(f"{field}.{name} must be a string")
        check_header_value(value, field=f"{field}.{name}")
    return dict(headers)


def check_header_name(name: Any, *, field: str) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ValidationError(f"{field}: {name!r} is not a valid header name")
    if name.lower() in RESERVED_HEADERS:
        raise ValidationError(f"{field} cannot be {name}; the HTTP client sets it")


def is_sendable_header_value(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


def check_header_value(value: str, *, field: str) -> None:
    if not is_sendable_header_value(value):
        raise ValidationError(f"{field} must be printable ASCII (it is sent in an HTTP header)")


def check_no_control_characters(value: str, *, field: str) -> None:
    """Refuse a secret holding CR, LF, NUL, tab, another C0 control or DEL; the message never quotes it."""
    if _CONTROL_CHARACTER.search(value):
        raise ValidationError(f"{field} must not contain control characters (CR, LF, NUL, tab, other C0 or DEL)")


def render_input(value: Any) -> tuple[str, bool]:
    """The input as message text, and whether it is structured (so adapters can show it as code)."""
    if isinstance(value, str):
        return (value if value.strip() else "(empty input)"), False
    return json.dumps(value, indent=2, ensure_ascii=False), True


def facts(request: DeliveryRequest) -> list[tuple[str, str]]:
    """Who asked, from where, and the ids that find this invocation again; absent values are left out."""
    user = request.external_user_name or request.external_user_id
    if request.external_user_email and request.external_user_email != user:
        user = f"{user} <{request.external_user_email}>" if user else request.external_user_email
    pairs = [
        ("User", user),
        ("System", request.external_system),
        ("Session", request.external_session_id),
        ("Invocation", request.invocation_id),
        ("Trace", request.trace_id),
    ]
    return [(name, value) for name, value in pairs if value]


def utf16_len(text: str) -> int:
    """Length as JavaScript counts it; the platforms' limits are in these units, not code points."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 units, ending in an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - 1
    kept: list[str] = []
    for char in text:
        budget -= 2 if ord(char) > 0xFFFF else 1
        if budget < 0:
            break
        kept.append(char)
    return "".join(kept) + ELLIPSIS


def code_block(text: str, *, limit: int, language: str = "") -> str:
    """A fenced code block of at most `limit` units, for markdown dialects that use ``` fences."""
    opening = f"```{language}\n"
    closing = "\n```"
    # A fence inside the text would end the block early; a zero-width space between the backticks keeps
    # them visible without closing it.
    body = text.replace("```", "`\u200b`\u200b`")
    return opening + truncate(body, limit - utf16_len(opening) - utf16_len(closing)) + closing


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response body as a JSON object, or None when it is empty, not JSON or not an object."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def webhook_output(response: httpx.Response) -> dict[str, Any]:
    """Output of a fire-and-forget webhook: it was delivered, and whatever short answer came back."""
    text = response.text.strip()
    return {"delivered": True, "response": text or None}
