"""DeliveryBulkhead: slots per agent and per host, taken without waiting, and nothing kept for idle ones."""

from __future__ import annotations

import pytest

from external_agents.nodes.platforms.bulkhead import DeliveryBulkhead


def test_an_agent_gets_at_most_its_slots_and_others_are_unaffected() -> None:
    bulkhead = DeliveryBulkhead(per_agent=2, per_host=10)
    held = [bulkhead.try_acquire(agent_id="slow", host="a.example") for _ in range(2)]
    assert all(held)
    assert bulkhead.try_acquire(agent_id="slow", host="a.example") is None
    assert bulkhead.try_acquire(agent_id="fast", host="a.example") is not None
    bulkhead.release(held[0])
    assert bulkhead.try_acquire(agent_id="slow", host="a.example") is not None


def test_a_host_gets_at_most_its_slots_across_agents() -> None:
    bulkhead = DeliveryBulkhead(per_agent=10, per_host=3)
    assert all(bulkhead.try_acquire(agent_id=f"agent-{n}", host="hangs.example") for n in range(3))
    assert bulkhead.try_acquire(agent_id="agent-9", host="hangs.example") is None
    assert bulkhead.try_acquire(agent_id="agent-9", host="fine.example") is not None


def test_released_slots_leave_no_entries() -> None:
    bulkhead = DeliveryBulkhead(per_agent=5, per_host=5)
    slots = [bulkhead.try_acquire(agent_id=f"agent-{n}", host=f"host-{n}") for n in range(5)]
    for slot in slots:
        assert slot is not None
        bulkhead.release(slot)
    assert (bulkhead._agents, bulkhead._hosts) == ({}, {})


@pytest.mark.parametrize(("per_agent", "per_host"), [(0, 1), (1, 0)])
def test_limits_must_be_positive(per_agent: int, per_host: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DeliveryBulkhead(per_agent=per_agent, per_host=per_host)
