"""When the gc guard looks: never while idle, every interval while busy, at once in a burst."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from tether.engine._gc import GcGuard


class CountingGuard(GcGuard):
    """A guard that records when it looks instead of looking."""

    def __init__(self) -> None:
        super().__init__(lambda: 0, interval=10.0, look_every=100)
        self.looks: list[float] = []

    def check(self) -> None:
        self.looks.append(trio.current_time())


async def test_a_busy_guard_looks_after_its_interval_or_a_burst_of_pokes(
    autojump_clock: MockClock,
) -> None:
    guard = CountingGuard()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard.run)
        await trio.sleep(50)
        assert guard.looks == []  # idle: it never looks

        guard.poke()  # at 50: busy, so it looks once its interval has passed
        await trio.sleep(15)
        assert guard.looks == [60.0]

        await trio.sleep(5)
        guard.poke()  # at 70: busy again, to look at 80 ...
        await trio.sleep(1)
        for _ in range(100):
            guard.poke()
        await trio.sleep(0.001)
        assert guard.looks == [60.0, 71.0]  # ... but 100 pokes since it woke: it looked at once

        await trio.sleep(50)  # it was poked since: one more look after the interval, then idle
        assert guard.looks == [60.0, 71.0, 81.0]
        nursery.cancel_scope.cancel()
