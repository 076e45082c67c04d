"""Fixtures for the simulator's tests: an engine with a fixed wall epoch, and a real Hypercorn
server on 127.0.0.1 (free port) started and stopped by the test."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from tether.engine import Engine, EngineConfig, WallClock
from tether.http import HttpSettings, KeyStore, create_app, serve, server_config
from tether.sim import check_over_rest
from tether.store import RedisStore

from ..conftest import fresh_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tether.sim import WireFleet

#: trio time 0 of the engine's clock is this wall time (2026-02-14T10:00:00Z).
EPOCH = 1771063200.0
API_KEY = "cmd_sim_test_key_0123456789"
AGENT_TOKEN = "agt_sim_test_token_0123456789"
WORKSPACE = "ws_sim"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: the 10,000-agent virtual hour (~15 s of wall time); kept in the run"
    )


@dataclass
class Server:
    url: str
    engine: Engine


@pytest.fixture
def autojump_clock(request: pytest.FixtureRequest) -> trio.testing.MockClock:
    """trio's MockClock, jumping to the next deadline when every task is blocked: at once in
    memory mode; in Redis mode only after 30 ms of real quiet, so that a task waiting for
    Redis's answer (real I/O) is not taken for idleness and time does not leap past the
    agents' heartbeats meanwhile."""
    callspec = getattr(request.node, "callspec", None)
    redis = callspec is not None and callspec.params.get("server") == "redis"
    return trio.testing.MockClock(autojump_threshold=0.03 if redis else 0)


def engine_clock() -> WallClock:
    return WallClock(epoch=EPOCH, trio_zero=trio.current_time())


@pytest.fixture(params=["memory", "redis"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The project's app over a real engine (in memory, and on Redis-backed state), served on
    127.0.0.1 at a free port."""
    keys = KeyStore()
    keys.add_key("api", API_KEY, WORKSPACE)
    keys.add_key("agent", AGENT_TOKEN, WORKSPACE)
    settings = HttpSettings()
    async with AsyncExitStack() as stack:
        store = None
        if request.param == "redis":
            store = await stack.enter_async_context(RedisStore(
                request.getfixturevalue("shared_redis").url, prefix=fresh_prefix("sim")))
        engine = await stack.enter_async_context(
            Engine(EngineConfig(), clock=engine_clock(), store=store))
        nursery = await stack.enter_async_context(trio.open_nursery())
        app = create_app(engine, keys, settings)
        binds = await nursery.start(
            partial(serve, app, server_config("127.0.0.1", 0, settings),
                    shutdown_trigger=trio.sleep_forever)
        )
        yield Server(url=binds[0], engine=engine)
        nursery.cancel_scope.cancel()


async def run_and_check(server: Server, fleet: WireFleet) -> tuple[int, list[str], float]:
    """Run ``fleet`` against ``server`` to its end, then check it over REST: the mismatches,
    what each disagreement was, and the fleet's clock when it was ready to be checked."""
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        await fleet.ready.wait()
        ready_at = fleet.now()
        problems: list[str] = []
        mismatches = await check_over_rest(
            server.url, API_KEY, fleet.sessions(), fleet.now, margin=1.0,
            report=lambda e, found: problems.append(f"{e.kind.value}: {found}"),
        )
        fleet.finish()
    return mismatches, problems, ready_at
