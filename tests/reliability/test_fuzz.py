"""API fuzzing from the contract: Schemathesis against a real server's ``/openapi.json``.

Reproduce a failure with ``TETHER_FUZZ_SEED=<seed printed> pytest tests/reliability/test_fuzz.py``.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
import trio

from tether import wire
from tether.engine import EngineConfig

from .conftest import ACME_AGENT, ACME_KEY, OTHER_AGENT, api_client, connect_agent, running_server

fuzz = pytest.importorskip("tests.reliability.fuzz", reason="pip install -e '.[reliability]'")

#: Cases per operation and mode: 23 operations x (70 + 30) >= 2,000 cases.
POSITIVE = int(os.environ.get("TETHER_FUZZ_POSITIVE", 70))
NEGATIVE = int(os.environ.get("TETHER_FUZZ_NEGATIVE", 30))
#: Live fixtures kept in place before every operation.
CONNECTED = 6
PENDING = 3

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
        async with api_client(self.server) as api:
            sessions = engine.list_sessions("ws_acme", limit=100).data
            connected = [s for s in sessions if s.status == "CONNECTED"]
            for _ in range(CONNECTED - len(connected)):
                await self.start_agent()
            pending = [s for s in sessions if s.status == "PENDING"]
            for _ in range(PENDING - len(pending)):
                n = next(self.machines)
                await api.post("/v1/sessions", json={"machine_id": f"pend_{n}",
                                                     "machine_hostname": f"h{n}"})
            bundles = []
            for s in engine.list_sessions("ws_acme", limit=100).data:
                bundle = {"session_id": s.session_id, "command_id": f"own_{s.machine_id}"}
                detail = engine.get_session("ws_acme", s.session_id)
                if s.status == "CONNECTED":
                    if not detail.attached_clients:
                        r = await api.post(f"/v1/sessions/{s.session_id}/clients",
                                           json={"user_email": "op@example.com",
                                                 "mode": "operator"})
                        client = r.json()["data"]["client_id"]
                        r = await api.post(f"/v1/sessions/{s.session_id}/commands",
                                           json={"client_id": client, "command": "ls -la"})
                        bundle["command_id"] = r.json()["data"]["command_id"]
                        bundle["client_id"] = client
                    else:
                        bundle["client_id"] = detail.attached_clients[0].client_id
                bundles.append(bundle)
            hooks = self.server.webhooks.list("ws_acme")
            if len(hooks) < 2:
                await api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                                     "events": ["*"]})
                hooks = self.server.webhooks.list("ws_acme")
            webhook_bundles = []
            for hook in hooks:
                page = self.server.webhooks.deliveries("ws_acme", hook.id, limit=5)
                for d in page.data or [None]:
                    b = {"webhook_id": hook.id}
                    if d is not None:
                        b["delivery_id"] = d.id
                    webhook_bundles.append(b)
        bundles += [{"session_id": sid} for sid in self.other_ids]  # another workspace: 404
        self.pool.sessions = bundles
        self.pool.webhooks = webhook_bundles
        self.pool.machines = [s.machine_id for s in engine.list_sessions("ws_acme", limit=50).data]


async def test_fuzz_every_operation():
    pool = fuzz.IdPool()
    async with running_server(_PATIENT) as server, trio.open_nursery() as nursery:
        fixture = Fixture(server, nursery, pool)
        fixture.other_ids.append(await fixture.start_agent(OTHER_AGENT, "other"))
        await fixture.refresh()
        token = trio.lowlevel.current_trio_token()

        async def bounded_refresh() -> None:
            with trio.fail_after(30):
                await fixture.refresh()

        def refresh() -> None:
            trio.from_thread.run(bounded_refresh, trio_token=token)

        result = await trio.to_thread.run_sync(
            lambda: fuzz.run_fuzz(server.url, ACME_KEY, pool, positive=POSITIVE,
                                  negative=NEGATIVE, refresh=refresh)
        )
        nursery.cancel_scope.cancel()
    fuzzed: dict[str, int] = {}
    for name, cases in result.per_operation.items():  # "<operation> [<mode>]"
        operation = name.rpartition(" [")[0]
        fuzzed[operation] = fuzzed.get(operation, 0) + cases
    report = os.environ.get("TETHER_RELIABILITY_REPORT")
    if report:
        with open(f"{report}.fuzz.json", "w") as out:
            json.dump({"seed": result.seed, "cases": result.cases,
                       "failures": len(result.failures), "statuses": result.statuses,
                       "operations": len(fuzzed), "cases_per_operation": fuzzed}, out)
    print(f"fuzz seed={result.seed} cases={result.cases} failures={len(result.failures)} "
          f"statuses={dict(sorted(result.statuses.items()))} per operation={fuzzed}")
    assert not result.failures, "\n\n".join(result.failures)
    assert result.cases >= 2000
