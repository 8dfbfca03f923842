"""Clocks a test moves by hand, so no test waits out a timer.

`FakeClock` stands in for `time.monotonic` / `time.time` wherever code takes a `clock` callable (the rate
limiters). `ManualTicker` stands in for `asyncio.sleep` in a loop that waits an interval between passes
(`keep_replaying`): each wait blocks until the test calls `tick()`, and the test can await the loop's next wait.
"""

from __future__ import annotations

import asyncio


class FakeClock:
    """Seconds that move only when the test advances them."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ManualTicker:
    """An `asyncio.sleep` replacement whose waits end only when the test ticks.

    `waited` lists the interval of every wait the loop began, so a test can check the interval it asked for.
    """

    def __init__(self) -> None:
        self.waited: list[float] = []
        self._waiting = asyncio.Condition()
        self._ticks = 0

    async def __call__(self, seconds: float) -> None:
        async with self._waiting:
            self.waited.append(seconds)
            self._waiting.notify_all()
            ticks = self._ticks
            await self._waiting.wait_for(lambda: self._ticks > ticks)

    async def tick(self) -> None:
        """End the wait in progress (the loop runs its next pass)."""
        async with self._waiting:
            self._ticks += 1
            self._waiting.notify_all()

    async def until_waiting(self, count: int) -> None:
        """Return once the loop has begun its `count`-th wait, that is, finished `count` passes."""
        async with self._waiting:
            await self._waiting.wait_for(lambda: len(self.waited) >= count)
