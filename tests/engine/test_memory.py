"""Ended sessions leave nothing behind once their retention has passed."""

from __future__ import annotations

import gc

import trio
from trio.testing import MockClock

from tether.engine import Engine
from tether.engine._actor import SessionActor
from tether.engine._link import AgentLink
from tether.engine._record import SessionRecord

from .conftest import hello


def _alive() -> dict[str, int]:
    gc.collect()
    counts = {SessionRecord: 0, SessionActor: 0, AgentLink: 0}
    for obj in gc.get_objects():
        if type(obj) in counts:
            counts[type(obj)] += 1
    return {kind.__name__: n for kind, n in counts.items()}


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
    assert _alive() == {"SessionRecord": 0, "SessionActor": 0, "AgentLink": 0}
