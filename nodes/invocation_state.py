"""The value an invocation is while it crosses the pipeline's nodes, and the outcome it ends as.

One frozen `Invocation` travels from node to node. Each node returns a new one with its own step filled in
(the agent, the rate-limit decision, the budget reservation, a denial, the delivery), so the values the stores
and the limiter produce (`Reservation`, `RateLimitDecision`, `BudgetRefusal`) are kept as they are, sealed
credentials stay sealed bytes until the delivery step opens them, and timestamps stay datetimes.

Kailash requires a node's outputs to be JSON, so every type here has `to_json`/`from_json`; the only caller
of those at a node boundary is `nodes.invocation_step` (the base of the pipeline's nodes).

How an invocation ends is a typed result: `PolicyDenied`, `RateLimited` or `BudgetExceeded` (the denials),
`Delivered` or `DeliveryFailed`. None of them carries an HTTP status: the channels choose that.

Module placement: these types hold the stores' and the governance modules' own values, so they sit in the
nodes layer, above them; the identity headers, which the light remote client needs too, are in
`external_agents.identity`.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from external_agents.identity import Identity
from external_agents.money import to_usd
from external_agents.nodes.governance.rate_limiter import RateLimitDecision
from external_agents.stores.budgets import BudgetRefusal, Reservation


@dataclass(frozen=True, kw_only=True, slots=True)
class InvocationCaller:
    """The API key (or operator) that asked for the invocation, and its organisation."""

    api_key_id: str
    organization_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class InvocationRequest:
    """What the caller sent: the body's input, context (merged over the context header) and metadata."""

    input: Any
    context: dict[str, Any]
    metadata: dict[str, Any]
    # A request with no body is refused after the policy check, so a denying policy answers first.
    body_received: bool
    workflow_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSnapshot:
    """The agent as the invocation found it; its credentials stay sealed (the cipher's token) until delivery."""

    id: str
    name: str
    platform: str
    platform_config: dict[str, Any]
    auth_config: dict[str, Any]
    sealed_credentials: bytes | None
    cost_per_execution: float
    max_daily_cost: float
    max_monthly_cost: float
    requests_per_minute: int
    requests_per_hour: int
    requests_per_day: int
    daily_execution_limit: int | None
    monthly_execution_limit: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AgentSnapshot:
        """From an agent row as `stores.agents` reads it."""
        token = row["encrypted_credentials"]
        return cls(
            **{name: row[name] for name in _AGENT_FIELDS if name != "sealed_credentials"},
            sealed_credentials=bytes(token) if token else None,
        )

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _AGENT_FIELDS}
        sealed = self.sealed_credentials
        data["sealed_credentials"] = base64.b64encode(sealed).decode() if sealed is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentSnapshot:
        sealed = data["sealed_credentials"]
        return cls(**{**data, "sealed_credentials": base64.b64decode(sealed) if sealed is not None else None})


_AGENT_FIELDS = tuple(AgentSnapshot.__dataclass_fields__)


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetStatus:
    """Where the month's spend stands after the reservation, against the warning and degradation thresholds."""

    usage: float
    warning: bool
    degraded: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEvent:
    """An audit event about the invocation's agent, by the invocation's caller (see `audit_rows`)."""

    event_type: str
    details: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyDenied:
    kind: Literal["policy"] = "policy"
    reason: str
    # The deciding policy; None when the default rule decided.
    policy_id: str | None
    matched_policies: tuple[str, ...]

    @property
    def detail(self) -> str:
        return f"Invocation denied by policy: {self.reason}"


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimited:
    kind: Literal["rate_limit"] = "rate_limit"
    decision: RateLimitDecision

    @property
    def detail(self) -> str:
        return f"Rate limit exceeded for this agent ({self.decision.exceeded_window} window)"


@dataclass(frozen=True, kw_only=True, slots=True)
class BudgetExceeded:
    kind: Literal["budget"] = "budget"
    refusal: BudgetRefusal

    @property
    def detail(self) -> str:
        limit = "budget" if self.refusal.reason == "cost" else "execution limit"
        return f"{self.refusal.period.capitalize()} {limit} exceeded for this agent"

    @property
    def budget_remaining_usd(self) -> float:
        return to_usd(self.refusal.remaining_micros)

    @property
    def budget_limit_usd(self) -> float:
        return to_usd(self.refusal.limit_micros)


Denial = PolicyDenied | RateLimited | BudgetExceeded


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivered:
    kind: Literal["delivered"] = "delivered"
    # The platform's HTTP status.
    status_code: int | None
    output: Any
    # What the platform said the call cost, if it said so in a form we accept (see reported_cost.py).
    reported_cost_micros: int | None
    attempts: int
    # What the record should say about this answer: a reported cost ignored, an output kept as text.
    record_note: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryFailed:
    kind: Literal["delivery_failed"] = "delivery_failed"
    timed_out: bool
    status_code: int | None
    attempts: int
    # Whether any attempt reached the platform (then the call is billed).
    reached_platform: bool
    error: str
    # Not attempted: the agent's (or its host's) deliveries in flight were at their bulkhead limit. The caller may
    # retry shortly; channels answer 503 with Retry-After.
    saturated: bool = False


Delivery = Delivered | DeliveryFailed
Result = Denial | Delivery

_RESULT_TYPES: dict[str, type[Any]] = {
    "policy": PolicyDenied,
    "rate_limit": RateLimited,
    "budget": BudgetExceeded,
    "delivered": Delivered,
    "delivery_failed": DeliveryFailed,
}


def result_to_json(result: Result) -> dict[str, Any]:
    data = asdict(result)
    if isinstance(result, PolicyDenied):
        data["matched_policies"] = list(result.matched_policies)
    return data


def result_from_json(data: dict[str, Any]) -> Result:
    kind = data["kind"]
    if kind == "rate_limit":
        return RateLimited(decision=RateLimitDecision(**data["decision"]))
    if kind == "budget":
        return BudgetExceeded(refusal=BudgetRefusal(**data["refusal"]))
    if kind == "policy":
        return PolicyDenied(
            reason=data["reason"], policy_id=data["policy_id"], matched_policies=tuple(data["matched_policies"])
        )
    return _RESULT_TYPES[kind](**data)


def _rate_limit_json(decision: RateLimitDecision | None) -> dict[str, Any] | None:
    if decision is None:
        return None
    return {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_at": decision.reset_at,
        "retry_after_seconds": decision.retry_after_seconds,
        "current_usage": decision.current_usage,
        "exceeded_window": decision.exceeded_window,
        "backend": decision.backend,
    }


def _reservation_json(reservation: Reservation | None) -> dict[str, Any] | None:
    if reservation is None:
        return None
    return {
        "agent_id": reservation.agent_id,
        "amount_micros": reservation.amount_micros,
        "day_id": reservation.day_id,
        "month_id": reservation.month_id,
        "day_spent_micros": reservation.day_spent_micros,
        "month_spent_micros": reservation.month_spent_micros,
        "day_executions": reservation.day_executions,
        "month_executions": reservation.month_executions,
    }


def _budget_json(status: BudgetStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"usage": status.usage, "warning": status.warning, "degraded": status.degraded}


def status_of(result: Result) -> Literal["denied", "success", "failure", "timeout"]:
    """The lineage status a result is recorded with."""
    if isinstance(result, Delivered):
        return "success"
    if isinstance(result, DeliveryFailed):
        return "timeout" if result.timed_out else "failure"
    return "denied"


@dataclass(frozen=True, kw_only=True, slots=True)
class Invocation:
    """One invocation so far: the request as prepared, then each step's result as the steps run."""

    invocation_id: str
    trace_id: str
    caller: InvocationCaller
    agent_id: str
    identity: Identity
    request: InvocationRequest
    request_timestamp: datetime
    # time.perf_counter() when it began, for its duration.
    started: float
    agent: AgentSnapshot | None = None
    rate_limit: RateLimitDecision | None = None
    reservation: Reservation | None = None
    budget: BudgetStatus | None = None
    denial: Denial | None = None
    delivery: Delivery | None = None
    audit_events: tuple[AuditEvent, ...] = field(default=())

    @property
    def denied(self) -> bool:
        return self.denial is not None

    @property
    def loaded_agent(self) -> AgentSnapshot:
        """The agent; every step after LoadInvocationAgentNode has it."""
        if self.agent is None:
            raise RuntimeError("the invocation's agent is not loaded (LoadInvocationAgentNode runs first)")
        return self.agent

    def request_columns(self) -> dict[str, Any]:
        """The lineage columns known once the agent is loaded: who asked, through what, for which agent, and what.
        The pending row (written with the reservation) and the final row both start from these."""
        agent, caller = self.loaded_agent, self.caller
        return {
            "id": self.invocation_id,
            **self.identity.fields(),
            "external_context": self.identity.external_context,
            "api_key_id": caller.api_key_id,
            "organization_id": caller.organization_id,
            "external_agent_id": agent.id,
            "external_agent_name": agent.name,
            "platform": agent.platform,
            "trace_id": self.trace_id,
            "workflow_id": self.request.workflow_id,
            "input": self.request.input,
            "metadata": self.request.metadata,
            "request_timestamp": self.request_timestamp,
        }

    def updated(self, *events: AuditEvent, **changes: Any) -> Invocation:
        """A copy with `events` appended to its audit events and `changes` applied."""
        return replace(self, audit_events=(*self.audit_events, *events), **changes)

    def to_json(self) -> dict[str, Any]:
        # Field by field rather than `asdict`, which deep-copies every nested dict: this runs at every step,
        # on the governance decision's measured path.
        request = self.request
        return {
            "invocation_id": self.invocation_id,
            "trace_id": self.trace_id,
            "caller": {"api_key_id": self.caller.api_key_id, "organization_id": self.caller.organization_id},
            "agent_id": self.agent_id,
            "identity": self.identity.to_json(),
            "request": {
                "input": request.input,
                "context": request.context,
                "metadata": request.metadata,
                "body_received": request.body_received,
                "workflow_id": request.workflow_id,
            },
            "request_timestamp": self.request_timestamp.isoformat(),
            "started": self.started,
            "agent": self.agent.to_json() if self.agent is not None else None,
            "rate_limit": _rate_limit_json(self.rate_limit),
            "reservation": _reservation_json(self.reservation),
            "budget": _budget_json(self.budget),
            "denial": result_to_json(self.denial) if self.denial is not None else None,
            "delivery": result_to_json(self.delivery) if self.delivery is not None else None,
            "audit_events": [{"event_type": e.event_type, "details": e.details} for e in self.audit_events],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Invocation:
        agent, rate_limit, reservation = data["agent"], data["rate_limit"], data["reservation"]
        budget, denial, delivery = data["budget"], data["denial"], data["delivery"]
        return cls(
            invocation_id=data["invocation_id"],
            trace_id=data["trace_id"],
            caller=InvocationCaller(**data["caller"]),
            agent_id=data["agent_id"],
            identity=Identity.from_json(data["identity"]),
            request=InvocationRequest(**data["request"]),
            request_timestamp=datetime.fromisoformat(data["request_timestamp"]),
            started=data["started"],
            agent=AgentSnapshot.from_json(agent) if agent is not None else None,
            rate_limit=RateLimitDecision(**rate_limit) if rate_limit is not None else None,
            reservation=Reservation(**reservation) if reservation is not None else None,
            budget=BudgetStatus(**budget) if budget is not None else None,
            denial=result_from_json(denial) if denial is not None else None,  # type: ignore[arg-type]
            delivery=result_from_json(delivery) if delivery is not None else None,  # type: ignore[arg-type]
            audit_events=tuple(AuditEvent(**event) for event in data["audit_events"]),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class InvocationOutcome:
    """How an invocation ended, as the channels answer it and the metrics count it."""

    invocation_id: str
    trace_id: str
    result: Result
    cost_usd: float
    duration_ms: float
    # The agent's rate-limit standing (X-RateLimit-* headers), when the rate-limit step ran.
    rate_limit: RateLimitDecision | None
    # Present only when the budget step reserved.
    budget: BudgetStatus | None

    @property
    def status(self) -> str:
        return status_of(self.result)

    @property
    def output(self) -> Any:
        return self.result.output if isinstance(self.result, Delivered) else None

    def to_json(self) -> dict[str, Any]:
        # `status` and `output` are derived, and written out for a host workflow reading the outcome as JSON.
        return {
            "invocation_id": self.invocation_id,
            "trace_id": self.trace_id,
            "status": self.status,
            "output": self.output,
            "result": result_to_json(self.result),
            "cost_usd": self.cost_usd,
            "duration_ms": self.duration_ms,
            "rate_limit": _rate_limit_json(self.rate_limit),
            "budget": _budget_json(self.budget),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InvocationOutcome:
        rate_limit, budget = data["rate_limit"], data["budget"]
        return cls(
            invocation_id=data["invocation_id"],
            trace_id=data["trace_id"],
            result=result_from_json(data["result"]),
            cost_usd=data["cost_usd"],
            duration_ms=data["duration_ms"],
            rate_limit=RateLimitDecision(**rate_limit) if rate_limit is not None else None,
            budget=BudgetStatus(**budget) if budget is not None else None,
        )
