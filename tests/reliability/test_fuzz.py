"""API fuzzing from the contract: Schemathesis, every phase and every check, against a real
server's ``/openapi.json``, with live sessions (agents), pending and ended ones, clients,
commands, webhooks and another workspace's ids in place.

Reproduce a failure with ``TETHER_FUZZ_SEED=<seed printed> pytest tests/reliability/test_fuzz.py
-s``; ``TETHER_FUZZ_EXAMPLES`` (examples per operation and phase) and ``TETHER_FUZZ_STEPS``
(stateful steps) make a run longer or shorter.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
import trio

from tether import wire
from tether.engine import EngineConfig

from .conftest import (
    ACME_AGENT,
    ACME_KEY,
    OTHER_AGENT,
    api_client,
    connect_agent,
    running_server,
)

fuzz = pytest.importorskip("tests.reliability.fuzz", reason="pip install -e '.[reliability]'")

#: Examples per operation and generation phase; stateful steps per scenario. Tuned to keep the
#: run near a minute on two shared cores.
EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", 100))
STEPS = int(os.environ.get("TETHER_FUZZ_STEPS", 20))
#: Live fixtures kept in place while the fuzzer runs (refreshed every REFRESH seconds).
CONNECTED = 6
PENDING = 3
REFRESH = 0.5

# Long real-clock timings: the fixture's agents must stay CONNECTED for the whole run.
_PATIENT = EngineConfig(heartbeat_timeout=3600, pending_timeout=3600, grace_period=3600,
                        background_timeout=3600)


async def _agent(server, machine: str, token: str, ready: trio.Event, out: list) -> None:
    """One agent: hello, then answer every run_command, until the server closes it."""
    try:
        async with connect_agent(server, token) as agent:
            welcome = await agent.hello(machine, f"host-{machine}")
            out.append(welcome.session_id)
            await agent.send(wire.Command(command="uptime", exit_code=0,
                                          command_id=f"own_{machine}"))
            ready.set()
            while True:
                frame = await agent.receive()
                if isinstance(frame, wire.RunCommand):
                    await agent.send(wire.CommandResult(command_id=frame.command_id,
                                                        exit_code=0))
    except BaseException as error:  # the server closed it (terminated by the fuzzer)
        out.append(error)
    finally:
        ready.set()


class Fixture:
    """Keeps live sessions, clients, commands and webhooks in place for the fuzzer."""

    def __init__(self, server, nursery, pool) -> None:
        self.server = server
        self.nursery = nursery
        self.pool = pool
        self.machines = itertools.count()
        self.other_ids: list[str] = []

    async def start_agent(self, token: str = ACME_AGENT, prefix: str = "fz") -> str:
        ready, out = trio.Event(), []
        self.nursery.start_soon(_agent, self.server, f"{prefix}_{next(self.machines)}", token,
                                ready, out)
        await ready.wait()
        assert isinstance(out[0], str), out[0]
        return out[0]

    async def refresh(self) -> None:
        engine = self.server.engine
        listed = engine.list_sessions
        async with api_client(self.server) as api:
            connected = listed("ws_acme", status="CONNECTED", limit=100).data
            for _ in range(CONNECTED - len(connected)):
                await self.start_agent()
            pending = listed("ws_acme", status="PENDING", limit=PENDING).data
            for _ in range(PENDING - len(pending)):
                n = next(self.machines)
                await api.post("/v1/sessions", json={"machine_id": f"pend_{n}",
                                                     "machine_hostname": f"h{n}"})
            ended = listed("ws_acme", status="DISCONNECTED", limit=3).data
            sessions = [*listed("ws_acme", status="CONNECTED", limit=CONNECTED).data,
                        *listed("ws_acme", status="PENDING", limit=PENDING).data, *ended]
            bundles = []
            for s in sessions:
                bundle = {"session_id": s.session_id, "command_id": f"own_{s.machine_id}"}
                detail = engine.get_session("ws_acme", s.session_id)
                if s.status == "CONNECTED" and not detail.attached_clients:
                    r = await api.post(f"/v1/sessions/{s.session_id}/clients",
                                       json={"user_email": "op@example.com", "mode": "operator"})
                    if r.status_code == 201:
                        client = r.json()["data"]["client_id"]
                        r = await api.post(f"/v1/sessions/{s.session_id}/commands",
                                           json={"client_id": client, "command": "ls -la"})
                        bundle["client_id"] = client
                        if r.status_code == 202:
                            bundle["command_id"] = r.json()["data"]["command_id"]
                elif detail.attached_clients:
                    bundle["client_id"] = detail.attached_clients[0].client_id
                bundles.append(bundle)
            hooks = await self.server.webhooks.list("ws_acme")
            if len(hooks) < 2:
                await api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                                     "events": ["*"]})
                hooks = await self.server.webhooks.list("ws_acme")
            webhook_bundles = []
            for hook in hooks[:4]:
                page = await self.server.webhooks.deliveries("ws_acme", hook.id, limit=5)
                for d in page.data or [None]:
                    b = {"webhook_id": hook.id}
                    if d is not None:
                        b["delivery_id"] = d.id
                    webhook_bundles.append(b)
        bundles += [{"session_id": sid} for sid in self.other_ids]  # another workspace: 404
        self.pool.sessions = bundles
        self.pool.webhooks = webhook_bundles
        self.pool.machines = [s.machine_id for s in sessions]

    async def keep_fresh(self) -> None:
        while True:
            await trio.sleep(REFRESH)
            with trio.fail_after(30):
                await self.refresh()


async def test_fuzz_every_operation_every_phase_every_check():
    pool = fuzz.IdPool()
    async with running_server(_PATIENT) as server, trio.open_nursery() as nursery:
        fixture = Fixture(server, nursery, pool)
        fixture.other_ids.append(await fixture.start_agent(OTHER_AGENT, "other"))
        await fixture.refresh()
        nursery.start_soon(fixture.keep_fresh)
        result = await trio.to_thread.run_sync(
            lambda: fuzz.run_fuzz(server.url, ACME_KEY, pool, max_examples=EXAMPLES,
                                  max_steps=STEPS)
        )
        nursery.cancel_scope.cancel()
    report = os.environ.get("TETHER_RELIABILITY_REPORT")
    if report:
        with open(f"{report}.fuzz.json", "w") as out:
            json.dump({"seed": result.seed, "cases": result.cases,
                       "failures": len(result.failures), "statuses": result.statuses,
                       "operations": len(result.per_operation),
                       "cases_per_operation": result.per_operation,
                       "cases_per_phase": result.per_phase, "checks": sorted(result.checks),
                       "links_followed": len(result.links_followed)}, out)
    slowest = sorted(result.seconds_per_scenario.items(), key=lambda kv: -kv[1])[:5]
    print(f"fuzz seed={result.seed} cases={result.cases} failures={len(result.failures)} "
          f"statuses={dict(sorted(result.statuses.items()))} phases={result.per_phase} "
          f"seconds per phase={result.seconds_per_phase} slowest scenarios={slowest} "
          f"links followed={sorted(result.links_followed)} checks={sorted(result.checks)} "
          f"per operation={result.per_operation}")
    assert not result.failures, "\n\n".join(result.failures)
    assert not result.skipped_phases, result.skipped_phases
    assert set(result.per_phase) == set(fuzz.PHASES), result.per_phase
    assert len(result.per_operation) >= 22, sorted(result.per_operation)
    assert any(link.startswith("POST /v1/sessions -> ") for link in result.links_followed), (
        "the stateful phase never followed a link from a created session")
