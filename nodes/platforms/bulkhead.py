"""Bulkheads for outbound deliveries: at most so many in flight per agent and per destination host.

Without them one agent whose platform hangs holds connections of the shared HTTP pool until each call times
out, and every other agent's delivery queues behind them (210 hanging calls made another agent's invoke take
12-13 s). A delivery takes a slot of its agent and of its host before anything is sent, without
waiting: when either is full the invocation is not delivered (its reservation is released, nothing is
billed) and the caller is told to retry shortly, while every other agent keeps its normal latency.

Counts rather than semaphores: the event loop runs one acquire at a time, so a check-and-increment is exact, and
an idle agent or host leaves no entry behind (the maps hold only what is in flight).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeliverySlot:
    agent_id: str
    host: str


class DeliveryBulkhead:
    """In-flight delivery counts per agent and per host, bounded by `per_agent` and `per_host`."""

    def __init__(self, *, per_agent: int, per_host: int) -> None:
        if per_agent < 1 or per_host < 1:
            raise ValueError("per_agent and per_host must be at least 1")
        self.per_agent = per_agent
        self.per_host = per_host
        self._agents: dict[str, int] = {}
        self._hosts: dict[str, int] = {}

    def try_acquire(self, *, agent_id: str, host: str) -> DeliverySlot | None:
        """A slot for one delivery, or None at once when the agent or the host already has its maximum."""
        if self._agents.get(agent_id, 0) >= self.per_agent or self._hosts.get(host, 0) >= self.per_host:
            return None
        self._agents[agent_id] = self._agents.get(agent_id, 0) + 1
        self._hosts[host] = self._hosts.get(host, 0) + 1
        return DeliverySlot(agent_id=agent_id, host=host)

    def release(self, slot: DeliverySlot) -> None:
        _decrement(self._agents, slot.agent_id)
        _decrement(self._hosts, slot.host)


def _decrement(counts: dict[str, int], key: str) -> None:
    remaining = counts[key] - 1
    if remaining:
        counts[key] = remaining
    else:
        del counts[key]
