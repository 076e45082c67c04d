"""Ended sessions leave nothing behind once their retention has passed."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from tether.engine import Engine
from tether.engine.testing import heap_objects

from .conftest import hello


async def test_nothing_of_an_ended_session_outlives_its_retention(
        engine: Engine, autojump_clock: MockClock) -> None:
    for n in range(20):
        link, _ = await hello(engine, machine=f"mach_{n}")
        if n % 2:
            await link.goodbye("done")
        else:
            link.transport_lost()  # grace, then DISCONNECTED by the timekeeper
        del link
    await trio.sleep(engine.config.grace_period + 1)
    assert engine.live_sessions == 0
    await trio.sleep(engine.config.retention + 1)
    assert engine.retained_sessions == 0
    # not even the last record purged, nor the last actor the timekeeper woke
    assert heap_objects() == {"SessionRecord": 0, "SessionActor": 0, "AgentLink": 0}
