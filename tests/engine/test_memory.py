"""Ended sessions leave nothing behind once their retention has passed."""

from __future__ import annotations

import gc

import trio
from trio.testing import MockClock

from tether.engine import Engine
from tether.engine._gc import GcGuard
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


def test_the_gc_guard_freezes_a_grown_old_generation_and_thaws_when_sessions_are_gone(
) -> None:
    gc.unfreeze()
    gc.collect()
    live = [0]
    guard = GcGuard(lambda: live[0], limit=len(gc.get_objects(generation=2)) + 5000,
                    thaw_below=100)
    try:
        guard.check()
        assert (guard.freezes, gc.get_freeze_count()) == (0, 0)
        held = [[] for _ in range(20_000)]  # long-lived tracked objects
        gc.collect()  # promoted to the old generation
        live[0] = 1000
        guard.check()
        assert guard.freezes == 1 and gc.get_freeze_count() >= len(held)
        assert len(gc.get_objects(generation=2)) < 5000  # full collections walk little now
        guard.check()
        assert guard.freezes == 1  # nothing new grew
        live[0] = 101
        guard.check()
        assert guard.thaws == 0  # not down to thaw_below
        live[0] = 100
        guard.check()
        assert guard.thaws == 1 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
