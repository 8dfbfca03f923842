"""The policy engine: condition matching, time windows, conflict resolution, fail modes and validation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from external_agents.errors import ValidationError
from external_agents.nodes.governance.policy_engine import (
    Policy,
    PolicyDecision,
    PolicyRequest,
    evaluate,
    validate_conditions,
    validate_policy_fields,
)
from external_agents.settings import ConflictResolution, PolicyFailMode

# Wednesday 2025-01-15 14:00 UTC is 09:00 in New York (EST, UTC-5).
WINTER_14_UTC = datetime(2025, 1, 15, 14, 0, tzinfo=UTC)
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)

DENY_OVERRIDES = ConflictResolution.DENY_OVERRIDES
ALLOW_OVERRIDES = ConflictResolution.ALLOW_OVERRIDES
FIRST_APPLICABLE = ConflictResolution.FIRST_APPLICABLE
CLOSED = PolicyFailMode.CLOSED
OPEN = PolicyFailMode.OPEN

ALL_TYPES = "time_window, environment, provider, platform, location, user, external_system, agent, cost"


def make_request(**overrides: Any) -> PolicyRequest:
    values: dict[str, Any] = {
        "agent_id": "agent-a",
        "platform": "slack",
        "external_user_id": "u-1",
        "external_user_email": "Ann@Example.com",
        "external_system": "crm",
        "external_session_id": "s-1",
        "context": {"environment": "production", "country": "US", "role": "analyst"},
        "estimated_cost_usd": Decimal("0.10"),
        "now": WINTER_14_UTC,
    }
    values.update(overrides)
    return PolicyRequest(**values)


def make_policy(
    policy_id: str = "p1",
    *,
    effect: str = "deny",
    conditions: list[dict[str, Any]] | None = None,
    priority: int = 0,
    enabled: bool = True,
    agent: str | None = None,
    created_at: datetime = EPOCH,
    name: str | None = None,
) -> Policy:
    return Policy(
        id=policy_id,
        name=name or policy_id.upper(),
        effect=effect,
        priority=priority,
        enabled=enabled,
        external_agent_id=agent,
        conditions=tuple(conditions or ()),
        created_at=created_at,
    )


def matches(condition: dict[str, Any], **request: Any) -> bool:
    return make_policy(conditions=[condition]).matches(make_request(**request))


def decide(
    policies: list[Policy],
    request: PolicyRequest | None = None,
    *,
    resolution: ConflictResolution = DENY_OVERRIDES,
    fail_mode: PolicyFailMode = CLOSED,
) -> PolicyDecision:
    return evaluate(policies, request or make_request(), resolution=resolution, fail_mode=fail_mode)


def window(**business_hours: Any) -> dict[str, Any]:
    return {"type": "time_window", "business_hours": business_hours}


NY_OFFICE = window(
    days=["monday", "tuesday", "wednesday", "thursday", "friday"],
    start_time="09:00",
    end_time="17:00",
    timezone="America/New_York",
)
PROD = {"type": "environment", "environments": ["production"]}
DEV = {"type": "environment", "environments": ["development"]}


# --- each condition type --------------------------------------------------------------------------------

CONDITION_CASES = [
    ("environment match", PROD, {}, True),
    ("environment case-insensitive", {"type": "environment", "environments": ["Production"]}, {}, True),
    ("environment other", DEV, {}, False),
    ("environment missing from context", PROD, {"context": {}}, False),
    ("environment not a string", PROD, {"context": {"environment": 1}}, False),
    ("provider is the platform", {"type": "provider", "providers": ["slack"]}, {}, True),
    (
        "provider from context",
        {"type": "provider", "providers": ["openai"]},
        {"context": {"provider": "OpenAI"}},
        True,
    ),
    ("provider neither", {"type": "provider", "providers": ["openai"]}, {}, False),
    ("platform match", {"type": "platform", "platforms": ["teams", "slack"]}, {}, True),
    ("platform other", {"type": "platform", "platforms": ["teams"]}, {}, False),
    ("location match", {"type": "location", "countries": ["US", "CA"]}, {}, True),
    (
        "location case-insensitive",
        {"type": "location", "countries": ["us"]},
        {"context": {"country": "Us"}},
        True,
    ),
    ("location other", {"type": "location", "countries": ["DE"]}, {}, False),
    ("location missing from context", {"type": "location", "countries": ["US"]}, {"context": {}}, False),
    ("user id match", {"type": "user", "user_ids": ["u-1"]}, {}, True),
    ("user id is exact", {"type": "user", "user_ids": ["U-1"]}, {}, False),
    ("user email case-insensitive", {"type": "user", "emails": ["ann@example.COM"]}, {}, True),
    ("user email other", {"type": "user", "emails": ["bob@example.com"]}, {}, False),
    ("user domain", {"type": "user", "domains": ["example.com"]}, {}, True),
    ("user domain case-insensitive", {"type": "user", "domains": ["EXAMPLE.com"]}, {}, True),
    (
        "user subdomain",
        {"type": "user", "domains": ["example.com"]},
        {"external_user_email": "ann@eu.example.com"},
        True,
    ),
    (
        "user lookalike domain",
        {"type": "user", "domains": ["example.com"]},
        {"external_user_email": "ann@badexample.com"},
        False,
    ),
    ("user domain written with @", {"type": "user", "domains": ["@example.com"]}, {}, True),
    (
        "user domain of a non-email",
        {"type": "user", "domains": ["example.com"]},
        {"external_user_email": "example.com"},
        False,
    ),
    ("user any list matches", {"type": "user", "user_ids": ["u-9"], "emails": ["ann@example.com"]}, {}, True),
    (
        "user no list matches",
        {"type": "user", "user_ids": ["u-9"], "emails": ["bob@example.com"], "domains": ["other.org"]},
        {},
        False,
    ),
    ("external system match", {"type": "external_system", "systems": ["CRM", "erp"]}, {}, True),
    ("external system other", {"type": "external_system", "systems": ["erp"]}, {}, False),
    ("agent match", {"type": "agent", "agent_ids": ["agent-a"]}, {}, True),
    ("agent other", {"type": "agent", "agent_ids": ["agent-b"]}, {}, False),
    ("cost above", {"type": "cost", "above_usd": 0.05}, {}, True),
    ("cost equal is not above", {"type": "cost", "above_usd": 0.1}, {}, False),
    ("cost below", {"type": "cost", "above_usd": 1}, {}, False),
    (
        "cost zero threshold, free call",
        {"type": "cost", "above_usd": 0},
        {"estimated_cost_usd": Decimal(0)},
        False,
    ),
    ("time window inside", NY_OFFICE, {}, True),
    ("time window outside", NY_OFFICE, {"now": WINTER_14_UTC - timedelta(minutes=1)}, False),
]


@pytest.mark.parametrize(
    ("condition", "request_overrides", "expected"),
    [case[1:] for case in CONDITION_CASES],
    ids=[case[0] for case in CONDITION_CASES],
)
def test_condition_matching(condition: dict[str, Any], request_overrides: dict[str, Any], expected: bool) -> None:
    assert matches(condition, **request_overrides) is expected


def test_policy_without_conditions_always_matches() -> None:
    assert make_policy(conditions=[]).matches(make_request())


def test_all_conditions_must_match() -> None:
    assert make_policy(conditions=[PROD, NY_OFFICE]).matches(make_request())
    assert not make_policy(conditions=[PROD, DEV]).matches(make_request())


# --- time windows ---------------------------------------------------------------------------------------

TIME_CASES = [
    # 14:00 UTC in winter is 09:00 EST: the first minute of the window.
    ("winter 09:00 NY", NY_OFFICE, datetime(2025, 1, 15, 14, 0, tzinfo=UTC), True),
    ("winter 08:59 NY", NY_OFFICE, datetime(2025, 1, 15, 13, 59, tzinfo=UTC), False),
    ("winter 16:59 NY", NY_OFFICE, datetime(2025, 1, 15, 21, 59, tzinfo=UTC), True),
    ("end is exclusive", NY_OFFICE, datetime(2025, 1, 15, 22, 0, tzinfo=UTC), False),
    # In summer New York is UTC-4: 13:00 UTC is 09:00 EDT, and 14:00 UTC is 10:00.
    ("summer 13:00 UTC is 09:00 EDT", NY_OFFICE, datetime(2025, 7, 15, 13, 0, tzinfo=UTC), True),
    ("summer 21:00 UTC is 17:00 EDT", NY_OFFICE, datetime(2025, 7, 15, 21, 0, tzinfo=UTC), False),
    ("winter 13:00 UTC is 08:00 EST", NY_OFFICE, datetime(2025, 1, 15, 13, 0, tzinfo=UTC), False),
    # The local day counts: Saturday 03:00 UTC is still Friday 22:00 in New York.
    (
        "local day differs from UTC day",
        window(days=["friday"], start_time="20:00", end_time="23:00", timezone="America/New_York"),
        datetime(2025, 1, 18, 3, 0, tzinfo=UTC),
        True,
    ),
    ("weekend excluded", NY_OFFICE, datetime(2025, 1, 18, 15, 0, tzinfo=UTC), False),
    # 2025-03-09 is the US spring-forward Sunday: 13:00 UTC is 09:00 EDT that day, 08:00 EST the day before.
    (
        "DST day after the switch",
        window(days=["sunday"], start_time="09:00", end_time="10:00", timezone="America/New_York"),
        datetime(2025, 3, 9, 13, 0, tzinfo=UTC),
        True,
    ),
    (
        "DST day before the switch",
        window(days=["saturday"], start_time="09:00", end_time="10:00", timezone="America/New_York"),
        datetime(2025, 3, 8, 13, 0, tzinfo=UTC),
        False,
    ),
    (
        "half-hour offset zone",
        window(start_time="09:00", end_time="09:30", timezone="Asia/Kolkata"),
        datetime(2025, 1, 15, 3, 45, tzinfo=UTC),
        True,
    ),
    (
        "aware non-UTC request time",
        window(start_time="10:00", end_time="11:00", timezone="Europe/Paris"),
        datetime(2025, 1, 15, 18, 30, tzinfo=ZoneInfo("Asia/Tokyo")),
        True,
    ),
    ("timezone defaults to UTC", window(start_time="14:00", end_time="15:00"), WINTER_14_UTC, True),
    ("seconds honoured", window(start_time="14:00:30", end_time="15:00"), WINTER_14_UTC, False),
    ("days only: listed day", window(days=["Wednesday"]), WINTER_14_UTC, True),
    ("days only: other day", window(days=["monday"]), WINTER_14_UTC, False),
    ("equal bounds mean all day", window(start_time="00:00", end_time="00:00"), WINTER_14_UTC, True),
    # Overnight 22:00-06:00 UTC.
    (
        "overnight late",
        window(start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 15, 23, 0, tzinfo=UTC),
        True,
    ),
    (
        "overnight start",
        window(start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 15, 22, 0, tzinfo=UTC),
        True,
    ),
    (
        "overnight early",
        window(start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 15, 5, 59, tzinfo=UTC),
        True,
    ),
    (
        "overnight end",
        window(start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 15, 6, 0, tzinfo=UTC),
        False,
    ),
    (
        "overnight noon",
        window(start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 15, 12, 0, tzinfo=UTC),
        False,
    ),
    # An overnight window belongs to the day it starts: Friday 22:00 to Saturday 06:00.
    (
        "overnight friday evening",
        window(days=["friday"], start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 17, 23, 0, tzinfo=UTC),
        True,
    ),
    (
        "overnight saturday small hours",
        window(days=["friday"], start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 18, 2, 0, tzinfo=UTC),
        True,
    ),
    (
        "overnight friday small hours belong to thursday",
        window(days=["friday"], start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 17, 2, 0, tzinfo=UTC),
        False,
    ),
    (
        "overnight monday small hours belong to sunday",
        window(days=["sunday"], start_time="22:00", end_time="06:00"),
        datetime(2025, 1, 20, 2, 0, tzinfo=UTC),
        True,
    ),
]


@pytest.mark.parametrize(
    ("condition", "now", "expected"), [case[1:] for case in TIME_CASES], ids=[case[0] for case in TIME_CASES]
)
def test_time_window(condition: dict[str, Any], now: datetime, expected: bool) -> None:
    assert matches(condition, now=now) is expected


def test_request_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_request(now=datetime(2025, 1, 15, 14, 0))


# --- conflict resolution --------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", list(ConflictResolution))
class TestDefaultRule:
    """With no matching policy, the request passes unless an allow policy applies to it."""

    def test_no_policies_allows(self, resolution: ConflictResolution) -> None:
        assert decide([], resolution=resolution) == PolicyDecision(True, "no policy applies", None, (), 0)

    def test_unmatched_org_wide_allow_denies(self, resolution: ConflictResolution) -> None:
        decision = decide([make_policy("p1", effect="allow", conditions=[DEV])], resolution=resolution)
        assert decision == PolicyDecision(False, "no allow policy matched", None, (), 1)

    def test_only_unmatched_denies_allows(self, resolution: ConflictResolution) -> None:
        policies = [
            make_policy("p1", conditions=[DEV]),
            make_policy("p2", conditions=[{"type": "cost", "above_usd": 5}]),
        ]
        assert decide(policies, resolution=resolution) == PolicyDecision(True, "no policy matched", None, (), 2)

    def test_unmatched_agent_allow_denies(self, resolution: ConflictResolution) -> None:
        decision = decide([make_policy("p1", effect="allow", agent="agent-a", conditions=[DEV])], resolution=resolution)
        assert not decision.allowed
        assert decision.reason == "no allow policy matched"


def test_deny_overrides_matching_deny_wins() -> None:
    policies = [
        make_policy("allow", effect="allow", priority=100, name="Allow all"),
        make_policy("deny-low", priority=1, conditions=[PROD], name="Block prod low"),
        make_policy("deny-high", priority=50, conditions=[PROD], name="Block prod"),
    ]
    decision = decide(policies, resolution=DENY_OVERRIDES)
    assert decision == PolicyDecision(
        False, "denied by policy 'Block prod' (deny-high)", "deny-high", ("allow", "deny-high", "deny-low"), 3
    )


def test_deny_overrides_matching_allow_allows() -> None:
    policies = [
        make_policy("a", effect="allow", conditions=[PROD], name="Prod"),
        make_policy("d", conditions=[DEV]),
    ]
    decision = decide(policies, resolution=DENY_OVERRIDES)
    assert decision == PolicyDecision(True, "allowed by policy 'Prod' (a)", "a", ("a",), 2)


def test_allow_overrides_matching_allow_wins() -> None:
    policies = [
        make_policy("deny", priority=100, name="Block"),
        make_policy("allow-low", effect="allow", priority=1, name="Low"),
        make_policy("allow-high", effect="allow", priority=2, name="High"),
    ]
    decision = decide(policies, resolution=ALLOW_OVERRIDES)
    assert decision == PolicyDecision(
        True, "allowed by policy 'High' (allow-high)", "allow-high", ("deny", "allow-high", "allow-low"), 3
    )


def test_allow_overrides_only_deny_matches() -> None:
    policies = [
        make_policy("a", effect="allow", conditions=[DEV]),
        make_policy("d", conditions=[PROD], name="Prod"),
    ]
    decision = decide(policies, resolution=ALLOW_OVERRIDES)
    assert decision == PolicyDecision(False, "denied by policy 'Prod' (d)", "d", ("d",), 2)


def test_first_applicable_highest_priority_decides() -> None:
    policies = [
        make_policy("deny", priority=1),
        make_policy("allow", effect="allow", priority=10, name="Allow"),
        make_policy("skipped", priority=20, conditions=[DEV]),
    ]
    decision = decide(policies, resolution=FIRST_APPLICABLE)
    # The non-matching top policy is passed over; the allow decides before the deny is examined.
    assert decision == PolicyDecision(True, "allowed by policy 'Allow' (allow)", "allow", ("allow",), 2)


def test_first_applicable_ties_go_to_the_older_policy() -> None:
    older = make_policy("older", priority=5, created_at=EPOCH, name="Older")
    newer = make_policy("newer", effect="allow", priority=5, created_at=EPOCH + timedelta(seconds=1))
    for order in ([older, newer], [newer, older]):
        decision = decide(order, resolution=FIRST_APPLICABLE)
        assert (decision.allowed, decision.policy_id) == (False, "older")


def test_negative_priorities_rank_below_zero() -> None:
    policies = [make_policy("neg", priority=-5), make_policy("zero", effect="allow", priority=0)]
    assert decide(policies, resolution=FIRST_APPLICABLE).policy_id == "zero"


def test_settings_given_as_strings_keep_their_meaning() -> None:
    policies = [Policy.from_row(broken_row())]
    decision = evaluate(policies, make_request(), resolution="FIRST_APPLICABLE", fail_mode="closed")  # type: ignore[arg-type]
    assert not decision.allowed
    with pytest.raises(ValueError, match="'closd' is not a valid PolicyFailMode"):
        evaluate(policies, make_request(), resolution=DENY_OVERRIDES, fail_mode="closd")  # type: ignore[arg-type]


# --- which policies apply -------------------------------------------------------------------------------


def test_disabled_policies_are_ignored() -> None:
    assert decide([make_policy("d", enabled=False)]).reason == "no policy applies"
    # A disabled allow policy does not make an allow-list either.
    policies = [make_policy("a", effect="allow", enabled=False, conditions=[DEV])]
    assert decide(policies).allowed


def test_other_agents_policies_are_ignored() -> None:
    policies = [
        make_policy("deny-b", agent="agent-b"),
        make_policy("allow-b", effect="allow", agent="agent-b", conditions=[DEV]),
    ]
    assert decide(policies) == PolicyDecision(True, "no policy applies", None, (), 0)


def test_agent_policy_applies_to_its_agent() -> None:
    decision = decide([make_policy("deny-a", agent="agent-a", name="Block A")])
    assert decision == PolicyDecision(False, "denied by policy 'Block A' (deny-a)", "deny-a", ("deny-a",), 1)


# --- evaluation errors and the fail mode ----------------------------------------------------------------


def broken_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": "broken",
        "name": "Broken",
        "effect": "deny",
        "priority": 10,
        "enabled": True,
        "external_agent_id": None,
        "conditions": [window(start_time="09:00", end_time="17:00", timezone="Mars/Base")],
        "created_at": EPOCH,
    }
    row.update(overrides)
    return row


def test_broken_stored_condition_loads_and_reports_its_fault() -> None:
    policy = Policy.from_row(broken_row())
    assert policy.fault == "conditions[0].business_hours.timezone: unknown time zone 'Mars/Base'"
    with pytest.raises(ValidationError, match="policy broken: conditions"):
        policy.matches(make_request())
    assert make_policy().fault is None


def test_fail_closed_denies_on_a_broken_policy() -> None:
    policies = [Policy.from_row(broken_row(effect="allow")), make_policy("ok", effect="allow", priority=20)]
    decision = decide(policies, fail_mode=CLOSED)
    assert decision == PolicyDecision(False, "policy 'Broken' (broken) could not be evaluated", "broken", ("ok",), 2)


def test_fail_open_skips_a_broken_policy() -> None:
    policies = [Policy.from_row(broken_row()), make_policy("d", conditions=[DEV])]
    assert decide(policies, fail_mode=OPEN) == PolicyDecision(True, "no policy matched", None, (), 2)
    # A skipped allow policy does not turn the request into an allow-list miss.
    assert decide([Policy.from_row(broken_row(effect="allow"))], fail_mode=OPEN).allowed


def test_fail_open_still_applies_the_other_policies() -> None:
    policies = [Policy.from_row(broken_row(effect="allow")), make_policy("d", priority=1, name="D")]
    decision = decide(policies, fail_mode=OPEN)
    assert (decision.allowed, decision.policy_id, decision.reason) == (False, "d", "denied by policy 'D' (d)")


def test_invalid_stored_effect_is_an_evaluation_error() -> None:
    policy = Policy.from_row(broken_row(effect="maybe", conditions=[]))
    assert policy.fault == "effect must be 'allow' or 'deny', got 'maybe'"
    assert not decide([policy], fail_mode=CLOSED).allowed
    assert decide([policy], fail_mode=OPEN).allowed


class ExplodingContext(Mapping[str, Any]):
    """A context whose lookups fail, standing in for any fault raised while a condition is matched."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("context unavailable")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(("fail_mode", "allowed"), [(CLOSED, False), (OPEN, True)])
def test_runtime_error_while_matching_follows_the_fail_mode(fail_mode: PolicyFailMode, allowed: bool) -> None:
    request = make_request(context=ExplodingContext())
    decision = decide([make_policy("env", conditions=[PROD], name="Env")], request, fail_mode=fail_mode)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "policy 'Env' (env) could not be evaluated"


def test_first_applicable_never_reaches_a_broken_lower_policy() -> None:
    policies = [make_policy("top", effect="allow", priority=100), Policy.from_row(broken_row(priority=1))]
    assert decide(policies, resolution=FIRST_APPLICABLE, fail_mode=CLOSED).allowed


# --- loading stored rows --------------------------------------------------------------------------------


def test_from_row_reads_sqlite_shapes() -> None:
    policy = Policy.from_row(
        {
            "policy_id": "p9",
            "name": "Night",
            "effect": "DENY",
            "priority": "3",
            "enabled": 0,
            "external_agent_id": "agent-a",
            "conditions": '[{"type": "environment", "environments": ["production"]}]',
            "created_at": "2025-01-01T10:00:00",
        }
    )
    assert (policy.id, policy.effect, policy.priority, policy.enabled) == ("p9", "deny", 3, False)
    assert policy.conditions == ({"type": "environment", "environments": ["production"]},)
    assert policy.created_at == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert policy.fault is None


def test_from_row_with_no_conditions() -> None:
    policy = Policy.from_row(broken_row(conditions=None))
    assert policy.conditions == ()
    assert policy.matches(make_request())


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ("{not json", "policy broken: stored conditions are not valid JSON"),
        ({"type": "agent"}, "policy broken: stored conditions must be a list"),
    ],
)
def test_from_row_refuses_conditions_that_are_not_a_list(conditions: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Policy.from_row(broken_row(conditions=conditions))
    assert caught.value.detail == message


def test_decision_to_dict() -> None:
    decision = PolicyDecision(False, "denied by policy 'X' (p1)", "p1", ("p1", "p2"), 4)
    assert decision.to_dict() == {
        "allowed": False,
        "reason": "denied by policy 'X' (p1)",
        "policy_id": "p1",
        "matched_policies": ["p1", "p2"],
        "evaluated": 4,
    }


# --- validation -----------------------------------------------------------------------------------------


def test_validate_conditions_returns_plain_copies_as_sent() -> None:
    sent = (
        {
            "type": "time_window",
            "business_hours": {
                "days": ("Monday",),
                "start_time": "22:00",
                "end_time": "06:00",
                "timezone": "Asia/Tokyo",
            },
        },
        {"type": "user", "emails": ["Ann@Example.com"], "user_ids": None},
        {"type": "location", "countries": ["us"]},
        {"type": "cost", "above_usd": 0.1},
    )
    result = validate_conditions(sent)
    assert result == [
        {
            "type": "time_window",
            "business_hours": {
                "days": ["Monday"],
                "start_time": "22:00",
                "end_time": "06:00",
                "timezone": "Asia/Tokyo",
            },
        },
        {"type": "user", "emails": ["Ann@Example.com"]},
        {"type": "location", "countries": ["us"]},
        {"type": "cost", "above_usd": 0.1},
    ]
    result[2]["countries"].append("DE")
    assert sent[2]["countries"] == ["us"]


def test_validate_conditions_accepts_every_type() -> None:
    every = [
        NY_OFFICE,
        PROD,
        {"type": "provider", "providers": ["openai"]},
        {"type": "platform", "platforms": ["slack"]},
        {"type": "location", "countries": ["US"]},
        {"type": "user", "user_ids": ["u"], "emails": ["a@b.c"], "domains": ["b.c"]},
        {"type": "external_system", "systems": ["crm"]},
        {"type": "agent", "agent_ids": ["agent-a"]},
        {"type": "cost", "above_usd": 0},
        window(),
    ]
    assert validate_conditions(every) == every


VALIDATION_CASES = [
    ("not a list", {"type": "agent"}, "conditions must be a list"),
    ("not an object", ["agent"], "conditions[0] must be an object"),
    ("missing type", [{}], f"conditions[0].type is required; expected one of: {ALL_TYPES}"),
    (
        "unknown type",
        [PROD, {"type": "weather"}],
        f"conditions[1].type: unknown condition type 'weather'; expected one of: {ALL_TYPES}",
    ),
    (
        "type not a string",
        [{"type": ["agent"]}],
        f"conditions[0].type: unknown condition type ['agent']; expected one of: {ALL_TYPES}",
    ),
    (
        "unknown field",
        [{"type": "environment", "environment": ["production"]}],
        "conditions[0].environment: unknown field for condition type 'environment'; expected: environments",
    ),
    ("list missing", [{"type": "agent"}], "conditions[0].agent_ids is required"),
    (
        "list empty",
        [{"type": "platform", "platforms": []}],
        "conditions[0].platforms must be a non-empty list of strings",
    ),
    (
        "list is a string",
        [{"type": "platform", "platforms": "slack"}],
        "conditions[0].platforms must be a non-empty list of strings",
    ),
    (
        "list item not a string",
        [{"type": "external_system", "systems": ["crm", 3]}],
        "conditions[0].systems[1] must be a non-empty string",
    ),
    (
        "list item blank",
        [{"type": "environment", "environments": [" "]}],
        "conditions[0].environments[0] must be a non-empty string",
    ),
    (
        "country not alpha-2",
        [{"type": "location", "countries": ["US", "USA"]}],
        "conditions[0].countries[1] must be a two-letter ISO 3166-1 country code, got 'USA'",
    ),
    (
        "user without lists",
        [{"type": "user"}],
        "conditions[0]: a user condition needs at least one of: user_ids, emails, domains",
    ),
    (
        "user email invalid",
        [{"type": "user", "emails": ["ann"]}],
        "conditions[0].emails[0] must be an email address, got 'ann'",
    ),
    (
        "user email with space",
        [{"type": "user", "emails": ["a nn@example.com"]}],
        "conditions[0].emails[0] must be an email address, got 'a nn@example.com'",
    ),
    (
        "user domain invalid",
        [{"type": "user", "domains": ["ann@example.com"]}],
        "conditions[0].domains[0] must be a domain name, got 'ann@example.com'",
    ),
    (
        "user empty list",
        [{"type": "user", "user_ids": []}],
        "conditions[0].user_ids must be a non-empty list of strings",
    ),
    ("cost missing", [PROD, PROD, {"type": "cost"}], "conditions[2].above_usd is required"),
    ("cost negative", [{"type": "cost", "above_usd": -1}], "conditions[0].above_usd must be a number ≥ 0"),
    ("cost string", [{"type": "cost", "above_usd": "5"}], "conditions[0].above_usd must be a number ≥ 0"),
    ("cost boolean", [{"type": "cost", "above_usd": True}], "conditions[0].above_usd must be a number ≥ 0"),
    (
        "cost NaN",
        [{"type": "cost", "above_usd": float("nan")}],
        "conditions[0].above_usd must be a number ≥ 0",
    ),
    (
        "cost infinite",
        [{"type": "cost", "above_usd": float("inf")}],
        "conditions[0].above_usd must be a number ≥ 0",
    ),
    ("hours missing", [{"type": "time_window"}], "conditions[0].business_hours is required"),
    (
        "hours not an object",
        [{"type": "time_window", "business_hours": "9-5"}],
        "conditions[0].business_hours must be an object",
    ),
    (
        "hours unknown field",
        [window(start="09:00")],
        "conditions[0].business_hours.start: unknown field; expected: days, start_time, end_time, timezone",
    ),
    (
        "unknown time zone",
        [window(timezone="Mars/Base")],
        "conditions[0].business_hours.timezone: unknown time zone 'Mars/Base'",
    ),
    (
        "absolute time zone path",
        [window(timezone="/etc/passwd")],
        "conditions[0].business_hours.timezone: unknown time zone '/etc/passwd'",
    ),
    (
        "time zone not a string",
        [window(timezone=5)],
        "conditions[0].business_hours.timezone must be an IANA time zone name such as 'Europe/London'",
    ),
    (
        "days empty",
        [window(days=[])],
        "conditions[0].business_hours.days must be a non-empty list of weekday names",
    ),
    (
        "unknown day",
        [window(days=["monday", "funday"])],
        "conditions[0].business_hours.days[1]: unknown day 'funday'; expected one of: "
        "monday, tuesday, wednesday, thursday, friday, saturday, sunday",
    ),
    (
        "bad start time",
        [window(start_time="9am", end_time="17:00")],
        "conditions[0].business_hours.start_time must be a time as HH:MM, got '9am'",
    ),
    (
        "hour out of range",
        [window(start_time="09:00", end_time="24:00")],
        "conditions[0].business_hours.end_time must be a time as HH:MM, got '24:00'",
    ),
    (
        "minute out of range",
        [window(start_time="09:60", end_time="17:00")],
        "conditions[0].business_hours.start_time must be a time as HH:MM, got '09:60'",
    ),
    (
        "time not a string",
        [window(start_time=900, end_time="17:00")],
        "conditions[0].business_hours.start_time must be a time as HH:MM, got 900",
    ),
    (
        "end without start",
        [window(end_time="17:00")],
        "conditions[0].business_hours.start_time is required when end_time is given",
    ),
    (
        "start without end",
        [window(start_time="09:00")],
        "conditions[0].business_hours.end_time is required when start_time is given",
    ),
]


@pytest.mark.parametrize(
    ("conditions", "message"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_validate_conditions_errors(conditions: object, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_conditions(conditions)
    assert caught.value.detail == message
    assert caught.value.status_code == 400


def test_validate_policy_fields_fills_defaults() -> None:
    assert validate_policy_fields({"name": "Block prod", "effect": "deny", "ignored": 1}) == {
        "name": "Block prod",
        "effect": "deny",
        "description": None,
        "priority": 0,
        "enabled": True,
        "external_agent_id": None,
        "conditions": [],
    }


def test_validate_policy_fields_partial_returns_only_what_was_sent() -> None:
    assert validate_policy_fields({"priority": 7, "conditions": [PROD]}, partial=True) == {
        "priority": 7,
        "conditions": [PROD],
    }


POLICY_FIELD_CASES = [
    ("name missing", {"effect": "deny"}, False, "name is required"),
    ("effect missing", {"name": "x"}, False, "effect is required"),
    ("name blank", {"name": "  "}, True, "name must be a non-empty string of at most 255 characters"),
    ("name too long", {"name": "x" * 256}, True, "name must be a non-empty string of at most 255 characters"),
    ("description", {"description": 5}, True, "description must be a string or null"),
    ("effect unknown", {"effect": "permit"}, True, "effect must be 'allow' or 'deny', got 'permit'"),
    ("effect upper case", {"effect": "ALLOW"}, True, "effect must be 'allow' or 'deny', got 'ALLOW'"),
    ("effect null", {"effect": None}, True, "effect must be 'allow' or 'deny', got None"),
    (
        "priority float",
        {"priority": 1.5},
        True,
        "priority must be an integer between -2147483648 and 2147483647",
    ),
    (
        "priority bool",
        {"priority": True},
        True,
        "priority must be an integer between -2147483648 and 2147483647",
    ),
    (
        "priority large",
        {"priority": 2**31},
        True,
        "priority must be an integer between -2147483648 and 2147483647",
    ),
    ("enabled", {"enabled": "yes"}, True, "enabled must be true or false"),
    ("agent blank", {"external_agent_id": ""}, True, "external_agent_id must be a non-empty string or null"),
    ("conditions", {"conditions": [{"type": "weather"}]}, True, "conditions[0].type: unknown condition type"),
]


@pytest.mark.parametrize(
    ("fields", "partial", "message"),
    [case[1:] for case in POLICY_FIELD_CASES],
    ids=[case[0] for case in POLICY_FIELD_CASES],
)
def test_validate_policy_fields_errors(fields: dict[str, Any], partial: bool, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_policy_fields(fields, partial=partial)
    assert caught.value.detail.startswith(message)
