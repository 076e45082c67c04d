"""Engine test fixtures: an engine under trio's MockClock with a fixed wall epoch.

pytest-trio hands a clock to ``trio.run`` only when the test function itself takes the clock
fixture, so every test that uses ``engine`` also names ``autojump_clock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tether.engine import Engine, EngineConfig, WallClock
from tether.engine.testing import RecordingTransport

#: trio time 0 is 2026-02-14T10:00:00Z, the seed's examples' morning.
EPOCH = 1771063200.0


def stamp(seconds: float) -> str:
    """The RFC 3339 timestamp of trio time ``seconds`` in these tests."""
    return WallClock(epoch=EPOCH, trio_zero=0.0).rfc3339(seconds)


@pytest.fixture
def config() -> EngineConfig:
    return EngineConfig()


@pytest.fixture
async def engine(
    autojump_clock: trio.testing.MockClock, config: EngineConfig
) -> AsyncIterator[Engine]:
    async with Engine(config, clock=WallClock(epoch=EPOCH, trio_zero=trio.current_time())) as e:
        yield e


async def hello(
    engine: Engine,
    machine: str = "mach_1",
    host: str = "prod-server",
    workspace: str = "ws_acme",
    token: str | None = None,
):
    transport = RecordingTransport()
    link = await engine.agent_hello(
        workspace, transport, machine_id=machine, machine_hostname=host, resume_token=token
    )
    return link, transport


def event_log(engine: Engine, workspace: str = "ws_acme", session_id: str | None = None):
    """(type, sequence, reason) of every retained event, optionally of one session."""
    return [
        (e.type, e.sequence, e.data.reason)
        for e in engine.events_after(workspace, None, 1000)
        if session_id is None or e.session_id == session_id
    ]
