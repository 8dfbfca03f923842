"""ABAC policy evaluation for invocations: pure, in memory, and fast enough to run on every request.

An organisation's policies allow or deny an invocation from its attributes (the agent and its platform, the
external identity headers, the request time, the merged context, the estimated cost). This module validates
the condition shapes the API accepts, compiles each stored policy once into plain matcher functions, and
decides one request under the configured conflict resolution and fail mode; it does no I/O, so the caller
loads the policies and records the decision.

Kailash's `ExternalAgentPolicyEngine` is not wrapped because its semantics differ from ours in ways that
change decisions (it denies when nothing matches, ranks lower priority numbers first with no tie-break,
treats a condition that raises as a silent non-match, has no overnight windows or user, platform,
external_system, agent and cost conditions, and its time windows import `pytz`, which is not installed).

Usage:

    policies = [Policy.from_row(row) for row in rows]
    decision = evaluate(
        policies,
        PolicyRequest(agent_id="a1", platform="slack", external_user_id="u1",
                      external_user_email="ann@example.com", external_system="crm",
                      external_session_id="s1", context={"environment": "production"},
                      estimated_cost_usd=Decimal("0.05"), now=datetime.now(UTC)),
        resolution=ConflictResolution.DENY_OVERRIDES,
        fail_mode=PolicyFailMode.CLOSED,
    )
    if not decision.allowed:
        ...  # 403 with decision.reason, decision.policy_id, decision.matched_policies
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from external_agents.errors import ValidationError
from external_agents.settings import ConflictResolution, PolicyFailMode

logger = logging.getLogger(__name__)

Effect = Literal["allow", "deny"]
EFFECTS: tuple[Effect, ...] = ("allow", "deny")

# The API's priority is stored in an integer column; refusing values outside it here keeps the error a 400.
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1
NAME_MAX_LENGTH = 255

# Fields each condition type accepts besides "type", in the order the error messages list them.
CONDITION_FIELDS: dict[str, tuple[str, ...]] = {
    "time_window": ("business_hours",),
    "environment": ("environments",),
    "provider": ("providers",),
    "platform": ("platforms",),
    "location": ("countries",),
    "user": ("user_ids", "emails", "domains"),
    "external_system": ("systems",),
    "agent": ("agent_ids",),
    "cost": ("above_usd",),
}
_TYPES_TEXT = ", ".join(CONDITION_FIELDS)
_BUSINESS_HOURS_FIELDS = ("days", "start_time", "end_time", "timezone")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ALL_DAYS = frozenset(range(7))
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?")
_COUNTRY = re.compile(r"[A-Za-z]{2}")

Matcher = Callable[["PolicyRequest"], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRequest:
    """The attributes of one invocation that policies can test."""

    agent_id: str
    platform: str
    external_user_id: str
    external_user_email: str
    external_system: str
    external_session_id: str
    # `context` from the body merged over X-External-Context: environment, country, role, provider, ...
    context: Mapping[str, Any]
    estimated_cost_usd: Decimal
    now: datetime

    def __post_init__(self) -> None:
        # A naive time would be read as the host's local time by astimezone(), silently shifting every window.
        if self.now.tzinfo is None:
            raise ValueError("PolicyRequest.now must be timezone-aware")


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: bool
    reason: str
    # The deciding policy; None when the default rule decided.
    policy_id: str | None
    # Policies whose conditions all matched, highest priority first.
    matched_policies: tuple[str, ...]
    evaluated: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "policy_id": self.policy_id,
            "matched_policies": list(self.matched_policies),
            "evaluated": self.evaluated,
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """One stored policy, compiled on construction so that evaluation only calls prepared matchers.

    A policy whose stored effect or conditions are invalid still loads; it raises when evaluated, so the
    fail mode decides what that means for the request.
    """

    id: str
    name: str
    effect: str
    priority: int
    enabled: bool
    # None: the policy covers every agent of the organisation.
    external_agent_id: str | None
    conditions: tuple[dict[str, Any], ...]
    created_at: datetime
    _matchers: tuple[Matcher, ...] = field(init=False, repr=False, compare=False)
    _fault: ValidationError | None = field(init=False, repr=False, compare=False)
    _order: tuple[int, float, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        created_at = self.created_at if self.created_at.tzinfo else self.created_at.replace(tzinfo=UTC)
        object.__setattr__(self, "created_at", created_at)
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "_order", (-self.priority, created_at.timestamp(), self.id))
        try:
            if self.effect not in EFFECTS:
                raise ValidationError(f"effect must be 'allow' or 'deny', got {self.effect!r}")
            matchers = tuple(_compile(condition) for condition in validate_conditions(self.conditions))
        except ValidationError as exc:
            object.__setattr__(self, "_matchers", ())
            object.__setattr__(self, "_fault", exc)
        else:
            object.__setattr__(self, "_matchers", matchers)
            object.__setattr__(self, "_fault", None)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Policy:
        """Build a policy from a stored row (json columns decoded or not, SQLite integers for booleans).

        Raises ValidationError only when the stored conditions are not a list at all; invalid content of a
        condition is kept and reported when the policy is evaluated.
        """
        policy_id = str(row["id"] if "id" in row else row["policy_id"])
        conditions = row.get("conditions") or []
        if isinstance(conditions, str | bytes):
            try:
                conditions = json.loads(conditions)
            except ValueError as exc:
                raise ValidationError(f"policy {policy_id}: stored conditions are not valid JSON") from exc
        if not isinstance(conditions, list | tuple):
            raise ValidationError(f"policy {policy_id}: stored conditions must be a list")
        created_at = row["created_at"]
        if isinstance(created_at, str):
            created_at = datetime.fromisoformat(created_at)
        agent_id = row.get("external_agent_id")
        return cls(
            id=policy_id,
            name=str(row["name"]),
            effect=str(row["effect"]).lower(),
            priority=int(row["priority"]),
            enabled=bool(row["enabled"]),
            external_agent_id=str(agent_id) if agent_id is not None else None,
            conditions=tuple(conditions),
            created_at=created_at,
        )

    @property
    def fault(self) -> str | None:
        """Why this stored policy cannot be evaluated, or None when it can."""
        return self._fault.detail if self._fault else None

    def applies_to(self, agent_id: str) -> bool:
        return self.enabled and (self.external_agent_id is None or self.external_agent_id == agent_id)

    def matches(self, request: PolicyRequest) -> bool:
        """Whether every condition matches; raises when the policy cannot be evaluated."""
        if self._fault is not None:
            raise ValidationError(f"policy {self.id}: {self._fault.detail}") from self._fault
        for matcher in self._matchers:
            if not matcher(request):
                return False
        return True

    def describe(self) -> str:
        return f"policy {self.name!r} ({self.id})"


def evaluate(
    policies: Sequence[Policy],
    request: PolicyRequest,
    *,
    resolution: ConflictResolution,
    fail_mode: PolicyFailMode,
) -> PolicyDecision:
    """Decide one request against the organisation's policies.

    Applicable policies (enabled, organisation-wide or for this agent) are examined by priority, highest
    first, older first on ties. With no matching policy the request is allowed unless an applicable allow
    policy exists, because an allow policy means "only what I match may pass".
    """
    # A plain string must not fall through to the wrong branch (a "closed" string read as open), so coerce.
    resolution = ConflictResolution(resolution)
    fail_mode = PolicyFailMode(fail_mode)
    applicable = sorted((p for p in policies if p.applies_to(request.agent_id)), key=_order)
    matched: list[str] = []
    first_allow: Policy | None = None
    first_deny: Policy | None = None
    allow_exists = False
    considered = 0
    evaluated = 0
    for policy in applicable:
        evaluated += 1
        try:
            hit = policy.matches(request)
        except Exception as exc:
            logger.warning(
                "policy_engine.evaluation_error policy_id=%s fail_mode=%s error=%s",
                policy.id,
                fail_mode.value,
                exc,
            )
            if fail_mode is PolicyFailMode.CLOSED:
                return PolicyDecision(
                    allowed=False,
                    reason=f"{policy.describe()} could not be evaluated",
                    policy_id=policy.id,
                    matched_policies=tuple(matched),
                    evaluated=evaluated,
                )
            continue
        considered += 1
        is_allow = policy.effect == "allow"
        allow_exists = allow_exists or is_allow
        if not hit:
            continue
        matched.append(policy.id)
        if resolution is ConflictResolution.FIRST_APPLICABLE:
            return _decided_by(policy, matched, evaluated)
        if is_allow:
            first_allow = first_allow or policy
        else:
            first_deny = first_deny or policy

    if resolution is ConflictResolution.DENY_OVERRIDES:
        winner = first_deny or first_allow
    else:
        winner = first_allow or first_deny
    if winner is not None:
        return _decided_by(winner, matched, evaluated)
    if allow_exists:
        return PolicyDecision(False, "no allow policy matched", None, (), evaluated)
    reason = "no policy matched" if considered else "no policy applies"
    return PolicyDecision(True, reason, None, (), evaluated)


def _order(policy: Policy) -> tuple[int, float, str]:
    return policy._order


def _decided_by(policy: Policy, matched: list[str], evaluated: int) -> PolicyDecision:
    allowed = policy.effect == "allow"
    verb = "allowed" if allowed else "denied"
    return PolicyDecision(allowed, f"{verb} by {policy.describe()}", policy.id, tuple(matched), evaluated)


def validate_policy_fields(fields: Mapping[str, object], *, partial: bool = False) -> dict[str, Any]:
    """Check the writable fields of a policy as the API receives them.

    Returns the recognised fields (name, description, effect, priority, enabled, external_agent_id,
    conditions); with `partial` (PATCH) only those present, otherwise with defaults filled in. Other keys are
    left to the caller.
    """
    result: dict[str, Any] = {}
    if not partial:
        for required in ("name", "effect"):
            if required not in fields:
                raise ValidationError(f"{required} is required")
        result = {
            "description": None,
            "priority": 0,
            "enabled": True,
            "external_agent_id": None,
            "conditions": [],
        }
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX_LENGTH:
            raise ValidationError(f"name must be a non-empty string of at most {NAME_MAX_LENGTH} characters")
        result["name"] = name
    if "description" in fields:
        description = fields["description"]
        if description is not None and not isinstance(description, str):
            raise ValidationError("description must be a string or null")
        result["description"] = description
    if "effect" in fields:
        effect = fields["effect"]
        if effect not in EFFECTS:
            raise ValidationError(f"effect must be 'allow' or 'deny', got {effect!r}")
        result["effect"] = effect
    if "priority" in fields:
        priority = fields["priority"]
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (PRIORITY_MIN <= priority <= PRIORITY_MAX)
        ):
            raise ValidationError(f"priority must be an integer between {PRIORITY_MIN} and {PRIORITY_MAX}")
        result["priority"] = priority
    if "enabled" in fields:
        if not isinstance(fields["enabled"], bool):
            raise ValidationError("enabled must be true or false")
        result["enabled"] = fields["enabled"]
    if "external_agent_id" in fields:
        agent_id = fields["external_agent_id"]
        if agent_id is not None and (not isinstance(agent_id, str) or not agent_id.strip()):
            raise ValidationError("external_agent_id must be a non-empty string or null")
        result["external_agent_id"] = agent_id
    if "conditions" in fields:
        result["conditions"] = validate_conditions(fields["conditions"])
    return result


def validate_conditions(conditions: object) -> list[dict[str, Any]]:
    """Check condition shapes and return plain copies (dicts and lists, safe to store as JSON).

    Values are copied as sent, not case-folded, because the API returns what it was given; matching is
    case-insensitive where the spec says so. Raises ValidationError naming the exact field.
    """
    if not isinstance(conditions, list | tuple):
        raise ValidationError("conditions must be a list")
    return [_validate_condition(condition, f"conditions[{i}]") for i, condition in enumerate(conditions)]


def _validate_condition(raw: object, path: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{path} must be an object")
    kind = raw.get("type")
    if kind is None:
        raise ValidationError(f"{path}.type is required; expected one of: {_TYPES_TEXT}")
    if not isinstance(kind, str) or kind not in CONDITION_FIELDS:
        raise ValidationError(f"{path}.type: unknown condition type {kind!r}; expected one of: {_TYPES_TEXT}")
    allowed = CONDITION_FIELDS[kind]
    for key in raw:
        if key != "type" and key not in allowed:
            raise ValidationError(
                f"{path}.{key}: unknown field for condition type '{kind}'; expected: {', '.join(allowed)}"
            )
    result: dict[str, Any] = {"type": kind}
    if kind == "time_window":
        result["business_hours"] = _validate_business_hours(raw.get("business_hours"), f"{path}.business_hours")
    elif kind == "cost":
        result["above_usd"] = _validate_amount(raw.get("above_usd"), f"{path}.above_usd")
    elif kind == "user":
        given = [name for name in allowed if raw.get(name) is not None]
        if not given:
            raise ValidationError(f"{path}: a user condition needs at least one of: {', '.join(allowed)}")
        for name in given:
            result[name] = _validate_strings(raw[name], f"{path}.{name}", kind=name)
    else:
        (name,) = allowed
        result[name] = _validate_strings(raw.get(name), f"{path}.{name}", kind=name)
    return result


def _validate_strings(value: object, path: str, *, kind: str) -> list[str]:
    if value is None:
        raise ValidationError(f"{path} is required")
    if not isinstance(value, list | tuple) or not value:
        raise ValidationError(f"{path} must be a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValidationError(f"{path}[{i}] must be a non-empty string")
        problem = _item_problem(kind, item)
        if problem:
            raise ValidationError(f"{path}[{i}] must be {problem}, got {item!r}")
    return list(value)


def _item_problem(kind: str, item: str) -> str | None:
    """What a list item of this kind should have been, or None when it is fine."""
    if kind == "countries" and not _COUNTRY.fullmatch(item):
        return "a two-letter ISO 3166-1 country code"
    if kind == "emails":
        local, at, domain = item.rpartition("@")
        if not at or not local or not domain or _has_space(item):
            return "an email address"
    if kind == "domains":
        domain = _bare_domain(item)
        if not domain or "@" in domain or _has_space(domain):
            return "a domain name"
    return None


def _has_space(text: str) -> bool:
    return any(char.isspace() for char in text)


def _bare_domain(domain: str) -> str:
    # "@example.com" and ".example.com" are common ways of writing "example.com and its subdomains".
    return domain.lstrip("@.").casefold()


def _validate_amount(value: object, path: str) -> int | float | Decimal:
    if value is None:
        raise ValidationError(f"{path} is required")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValidationError(f"{path} must be a number ≥ 0")
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0:
        raise ValidationError(f"{path} must be a number ≥ 0")
    return value


def _validate_business_hours(value: object, path: str) -> dict[str, Any]:
    if value is None:
        raise ValidationError(f"{path} is required")
    if not isinstance(value, Mapping):
        raise ValidationError(f"{path} must be an object")
    for key in value:
        if key not in _BUSINESS_HOURS_FIELDS:
            raise ValidationError(f"{path}.{key}: unknown field; expected: {', '.join(_BUSINESS_HOURS_FIELDS)}")
    result: dict[str, Any] = {}
    if "days" in value:
        days = value["days"]
        if not isinstance(days, list | tuple) or not days:
            raise ValidationError(f"{path}.days must be a non-empty list of weekday names")
        for i, day in enumerate(days):
            if not isinstance(day, str) or day.casefold() not in WEEKDAYS:
                raise ValidationError(f"{path}.days[{i}]: unknown day {day!r}; expected one of: {', '.join(WEEKDAYS)}")
        result["days"] = list(days)
    for key, other in (("start_time", "end_time"), ("end_time", "start_time")):
        if key in value:
            _parse_time(value[key], f"{path}.{key}")
            result[key] = value[key]
        elif other in value:
            raise ValidationError(f"{path}.{key} is required when {other} is given")
    if "timezone" in value:
        _zone(value["timezone"], f"{path}.timezone")
        result["timezone"] = value["timezone"]
    return result


def _parse_time(value: object, path: str) -> int:
    """Seconds since local midnight of an "HH:MM" (or "HH:MM:SS") time."""
    found = _TIME.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValidationError(f"{path} must be a time as HH:MM, got {value!r}")
    hours, minutes, seconds = (int(part or 0) for part in found.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValidationError(f"{path} must be a time as HH:MM, got {value!r}")
    return hours * 3600 + minutes * 60 + seconds


def _zone(value: object, path: str) -> ZoneInfo:
    if not isinstance(value, str):
        raise ValidationError(f"{path} must be an IANA time zone name such as 'Europe/London'")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValidationError(f"{path}: unknown time zone {value!r}") from exc


def _compile(condition: dict[str, Any]) -> Matcher:
    """A matcher for one validated condition; everything that does not depend on the request is done here."""
    kind = condition["type"]
    if kind == "time_window":
        return _time_window(condition["business_hours"])
    if kind == "cost":
        threshold = Decimal(str(condition["above_usd"]))
        return lambda request: request.estimated_cost_usd > threshold
    if kind == "user":
        return _user(condition)
    values = frozenset(value.casefold() for value in condition[CONDITION_FIELDS[kind][0]])
    if kind == "environment":
        return _context_in("environment", values)
    if kind == "location":
        return _context_in("country", values)
    if kind == "provider":
        in_context = _context_in("provider", values)
        return lambda request: request.platform.casefold() in values or in_context(request)
    if kind == "platform":
        return lambda request: request.platform.casefold() in values
    if kind == "external_system":
        return lambda request: request.external_system.casefold() in values
    # Agent ids are opaque identifiers, so they compare exactly.
    agent_ids = frozenset(condition["agent_ids"])
    return lambda request: request.agent_id in agent_ids


def _context_in(key: str, values: frozenset[str]) -> Matcher:
    def match(request: PolicyRequest) -> bool:
        value = request.context.get(key)
        return isinstance(value, str) and value.casefold() in values

    return match


def _user(condition: dict[str, Any]) -> Matcher:
    # User ids are opaque identifiers and compare exactly; email addresses and domains do not.
    user_ids = frozenset(condition.get("user_ids", ()))
    emails = frozenset(email.casefold() for email in condition.get("emails", ()))
    domains = frozenset(_bare_domain(domain) for domain in condition.get("domains", ()))
    suffixes = tuple("." + domain for domain in domains)

    def match(request: PolicyRequest) -> bool:
        if request.external_user_id in user_ids:
            return True
        email = request.external_user_email.casefold()
        if email in emails:
            return True
        if not domains:
            return False
        local, at, domain = email.rpartition("@")
        return bool(at and local) and (domain in domains or domain.endswith(suffixes))

    return match


def _time_window(hours: dict[str, Any]) -> Matcher:
    zone = _zone(hours.get("timezone", "UTC"), "timezone")
    days = frozenset(WEEKDAYS.index(day.casefold()) for day in hours["days"]) if "days" in hours else _ALL_DAYS
    if "start_time" not in hours:
        return lambda request: request.now.astimezone(zone).weekday() in days
    start = _parse_time(hours["start_time"], "start_time")
    end = _parse_time(hours["end_time"], "end_time")
    if start == end:
        # Equal bounds mean the whole day: an empty window would be a policy that can never match.
        return lambda request: request.now.astimezone(zone).weekday() in days

    def daytime(request: PolicyRequest) -> bool:
        local = request.now.astimezone(zone)
        second = local.hour * 3600 + local.minute * 60 + local.second
        return start <= second < end and local.weekday() in days

    def overnight(request: PolicyRequest) -> bool:
        local = request.now.astimezone(zone)
        second = local.hour * 3600 + local.minute * 60 + local.second
        if second >= start:
            return local.weekday() in days
        # Past midnight the window belongs to the day it started on: "friday 22:00-06:00" covers Saturday.
        return second < end and (local.weekday() - 1) % 7 in days

    return daytime if start < end else overnight
