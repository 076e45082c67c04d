"""Fault runs on a real cluster: ``redis-server`` and ``tether serve --redis`` node processes on
127.0.0.1, simulated agents over real WebSockets (``tether sim``'s fleet, spread over the
nodes), a real webhook receiver, the REST API on a node other than each agent's.

After each run, the invariants: one active session per machine cluster-wide; exactly one
terminal event per session and none of them spurious (no session ends on the server's own
account while its agent came back in time); each session's events numbered without a gap in
the one log; every event at the receiver at least once (repeats counted and reported), each
session's in order; and the sim's own check of every session against what its agent did.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import msgspec
import trio
import trio_websocket

from tether import wire
from tether.sim import SimConfig, run_sim
from tether.sim.audit import WebhookSink, audit_events, read_event_log

from ..serving import free_port, open_agent, say_hello, wait_ready

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from tests.redis_server import RedisServer
    from tether.sim import SimResult
    from tether.sim.audit import EventAudit

API = "cmd_cluster_faults_key_0123456789"
AGENT = "agt_cluster_faults_token_0123456789"
WS = "ws_cf"
#: Short, so leases lapse under load too: a node busy taking 1,000 sessions over on a loaded
#: 2-core machine stalls past it now and then, and the other node adopts some of its live
#: sessions while their agents resume. Nothing may be lost or doubled for that.
LEASE_TTL = 2.0


class Node:
    """One ``tether serve --redis`` process (its output in the test's tmp dir)."""

    def __init__(self, redis: RedisServer, tmp_path: Path, name: str, port: int,
                 lease_ttl: float) -> None:
        self.redis = redis
        self.lease_ttl = lease_ttl
        self.tmp_path = tmp_path
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: trio.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "TETHER_API_KEYS": f"{API}={WS}",
               "TETHER_AGENT_TOKENS": f"{AGENT}={WS}"}
        log = (self.tmp_path / f"{self.name}.log").open("ab")
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tether.cli", "serve", "--port", str(self.port),
             "--keys", str(self.tmp_path / "keys.json"), "--log-level", "WARNING",
             "--redis", self.redis.url, "--redis-prefix", "cf:", "--node-id", self.name,
             "--lease-ttl", str(self.lease_ttl), "--allow-private-webhooks",
             "--drain-timeout", "5"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with api(self.url) as client:
            await wait_ready(client)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: nothing is flushed, nothing released
        await self.proc.wait()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def cluster(redis: RedisServer, tmp_path: Path, *names: str,
                  lease_ttl: float = LEASE_TTL) -> AsyncIterator[list[Node]]:
    nodes = [Node(redis, tmp_path, name, free_port(), lease_ttl) for name in names]
    try:
        for node in nodes:
            await node.start()
        yield nodes
    finally:
        with trio.CancelScope(shield=True):
            for node in nodes:
                await node.stop()


def api(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10,
                             headers={"Authorization": f"Bearer {API}"})


async def live_by_machine(url: str) -> dict[str, set[str]]:
    """Every machine's sessions that are not over, as the node at ``url`` lists them (pages
    of a list that changes meanwhile: a session may show on two of them)."""
    live: dict[str, set[str]] = {}
    async with api(url) as client:
        offset = 0
        while True:
            r = await client.get("/v1/sessions", params={"limit": 100, "offset": offset})
            assert r.status_code == 200, r.text
            page = r.json()
            for s in page["data"]:
                if s["status"] not in ("DISCONNECTED", "ERROR"):
                    live.setdefault(s["machine_id"], set()).add(s["session_id"])
            offset += len(page["data"])
            if not page["data"] or offset >= page["meta"]["total"]:
                return live


async def one_active_per_machine(nodes: list[Node], problems: list[str]) -> None:
    """Every node, every few seconds: no machine with two live sessions."""
    while True:
        await trio.sleep(2)
        for node in nodes:
            if node.proc is None or node.proc.returncode is not None:
                continue
            try:
                live = await live_by_machine(node.url)
            except httpx.TransportError:
                continue  # a node being killed or restarted
            problems.extend(f"{node.name}: {machine} has live sessions {ids}"
                            for machine, ids in live.items() if len(ids) > 1)


async def settled_audit(url: str, sink: WebhookSink, sessions: int,
                        timeout: float = 60) -> EventAudit:
    """Wait until the log has ended all ``sessions`` and the receiver has every event of it
    (or ``timeout``), then audit."""
    with trio.move_on_after(timeout):
        while True:
            log = await read_event_log(url, API)
            ended = sum(1 for e in log if e.type in ("session.disconnected", "session.error"))
            if ended >= sessions and {e.id for e in log} <= {e.id for e in sink.received}:
                break
            await trio.sleep(0.5)
    log = await read_event_log(url, API)
    # Agents here never stay away past their grace period: every session counts as one whose
    # agent came back, so any end on the server's own account is spurious.
    return audit_events(log, sink.received, resumed={e.session_id for e in log})


class Watched:
    """Two nodes under watch: a webhook receiver subscribed to every event, and what the
    one-active-session-per-machine watch found."""

    def __init__(self, nodes: list[Node], sink: WebhookSink, problems: list[str]) -> None:
        self.nodes = nodes
        self.sink = sink
        self.problems = problems

    async def invariants_hold(self, sessions: int) -> None:
        """After a run of ``sessions`` agents that all said goodbye at its end."""
        assert not self.problems, self.problems[:5]
        audit = await settled_audit(self.nodes[1].url, self.sink, sessions)
        print(audit)
        assert audit.ok, audit.problems
        assert audit.sessions == sessions
        assert audit.ends == {"agent_goodbye": sessions}  # the sim's goodbyes, nothing else


@asynccontextmanager
async def watched(redis: RedisServer, tmp_path: Path,
                  lease_ttl: float = LEASE_TTL) -> AsyncIterator[Watched]:
    async with cluster(redis, tmp_path, "node-a", "node-b", lease_ttl=lease_ttl) as nodes, \
            trio.open_nursery() as nursery:
        try:
            sink = WebhookSink()
            await nursery.start(sink.run)
            async with api(nodes[1].url) as client:
                r = await client.post("/v1/webhooks", json={"url": sink.url, "events": ["*"]})
                assert r.status_code == 201, r.text
            problems: list[str] = []
            nursery.start_soon(one_active_per_machine, nodes, problems)
            yield Watched(nodes, sink, problems)
        finally:
            nursery.cancel_scope.cancel()


async def fleet_under(nodes: list[Node], fault: Callable[[], Awaitable[None]], *,
                      agents: int, duration: float, fault_at: float,
                      scenario: str = "steady=7,commands=3", operators: float = 0.1,
                      ) -> SimResult:
    """Run ``agents`` over ``nodes`` for ``duration`` seconds, with ``fault`` at
    ``fault_at``; the sim's check must hold, and no agent may have lost its session.

    The agents write output (commands print, busy machines stream), operators watch their
    clients' attach streams and observers attach their own, on a node other than the
    agent's: every byte each stream received must be what the agent wrote, once and in
    order, and each session's attached clients what the people left attached, whatever the
    fault did to the streams' nodes."""
    results: list[SimResult] = []
    out = io.StringIO()

    async def sim() -> None:
        results.append(await run_sim(SimConfig(
            url=",".join(node.url for node in nodes), agent_token=AGENT, agents=agents,
            duration=duration, scenario=scenario, seed=3, api_key=API,
            operators=operators, agents_per_process=5000,
            progress_every=5), out=out))

    started = trio.current_time()
    async with trio.open_nursery() as run:
        run.start_soon(sim)
        await trio.sleep_until(started + fault_at)
        await fault()
    [result] = results
    print(result.summary(), *result.problems, sep="\n")
    assert result.ok, result.summary() + "\n" + out.getvalue()[-3000:]
    assert result.sessions == agents, result.summary()  # resumed, none replaced
    return result


async def test_tether_sim_spreads_agents_over_nodes_and_checks_each_on_another(
        redis: RedisServer, tmp_path: Path) -> None:
    """``tether sim --url a,b`` (the command): a mixed fleet with drops, restarts, goodbyes
    and operators over two nodes; every session checked on a node other than its agent's."""
    async with cluster(redis, tmp_path, "node-a", "node-b") as (a, b):
        proc = await trio.run_process(
            [sys.executable, "-m", "tether.cli", "sim", "--url", f"{a.url},{b.url}",
             "--agent-token", AGENT, "--api-key", API, "--agents", "120", "--duration", "12",
             "--scenario", "mixed", "--seed", "5", "--operators", "0.2", "--json"],
            capture_stdout=True, capture_stderr=True, check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()[-3000:]
        result = msgspec.json.decode(out.splitlines()[-1])
        assert (result["nodes"], result["errors"], result["mismatches"]) == (2, 0, 0), out
        assert result["checked"] and result["sessions"] >= 120
        assert result["operator_commands"] > 0

        # A bad list is refused before anything runs.
        bad = await trio.run_process(
            [sys.executable, "-m", "tether.cli", "sim", "--url", f"{a.url},,{b.url}",
             "--agent-token", AGENT, "--agents", "1", "--duration", "1"],
            capture_stdout=True, capture_stderr=True, check=False)
        assert bad.returncode == 2
        assert "empty URL" in bad.stderr.decode()


async def test_kill_9_and_restart_a_node_under_2000_agents(
        redis: RedisServer, tmp_path: Path) -> None:
    async with watched(redis, tmp_path) as watch:
        a = watch.nodes[0]

        async def kill_and_restart() -> None:
            await a.kill()
            await trio.sleep(3)
            a.name = "node-a2"  # a new process: a new node id
            await a.start()

        # At 10 s every agent is connected (the ramp takes 5 s).
        result = await fleet_under(watch.nodes, kill_and_restart, agents=2000, duration=30,
                                   fault_at=10, operators=0.05)
        # About half the agents were on node-a (fewer if node-a was slow to take their first
        # hello: they went to node-b): each came back on node-b with its session.
        assert result.failovers + result.connect_retries >= 900, result.summary()
        assert result.failovers >= 500, result.summary()
        await watch.invariants_hold(2000)


async def test_redis_paused_under_agents_loses_nothing(redis: RedisServer,
                                                       tmp_path: Path) -> None:
    """SIGSTOP Redis for 4 s (past its 3 s answer timeout: the nodes see an outage; less than
    the lease TTL) under 300 agents on two nodes: writes wait (the API answers 503
    meanwhile), agents stay, and once Redis answers again every report, command and event is
    there, once. (An outage past the TTL lets the leases lapse: see docs/cluster.md.)"""
    async with watched(redis, tmp_path, lease_ttl=10.0) as watch:

        async def pause_redis() -> None:
            redis.pause()
            await trio.sleep(4)
            redis.resume()

        await fleet_under(watch.nodes, pause_redis, agents=300, duration=20, fault_at=8)
        await watch.invariants_hold(300)


async def test_a_paused_owner_wakes_after_its_sessions_moved(redis: RedisServer,
                                                             tmp_path: Path) -> None:
    """SIGSTOP a node past its lease under 300 agents: the other node adopts its sessions
    (GRACE_PERIOD ``node_lost``); woken, the old owner's writes are refused by the fences and
    it tells its agents to resume (1012 ``session_moved``), which they do on the other node.
    No session ends, none is run by two nodes. (What agents report to a node while it is
    paused is lost with its refused writes: the agents here only heartbeat.)"""
    async with watched(redis, tmp_path) as watch:
        a, b = watch.nodes

        async def pause_node_a() -> None:
            a.signal(signal.SIGSTOP)
            async with api(b.url) as client:  # node-b adopts node-a's sessions
                with trio.fail_after(LEASE_TTL + 10):
                    while True:
                        r = await client.get("/v1/sessions", params={
                            "status": "GRACE_PERIOD", "limit": 1})
                        if r.json()["meta"]["total"] > 100:
                            break
                        await trio.sleep(0.2)
            a.signal(signal.SIGCONT)

        result = await fleet_under(watch.nodes, pause_node_a, agents=300, duration=35,
                                   fault_at=8, scenario="steady", operators=0.0)
        assert result.failovers >= 100, result.summary()
        await watch.invariants_hold(300)


async def hello_into(welcomes: dict[str, wire.Welcome], name: str,
                     ws: trio_websocket.WebSocketConnection, machine: str) -> None:
    welcomes[name] = await say_hello(ws, machine, "racer")


async def test_two_nodes_racing_for_one_machine_leave_one_active_session(
        redis: RedisServer, tmp_path: Path) -> None:
    """Real agents say hello for the same machine on both nodes at the same moment, round
    after round: each round leaves exactly one active session for the machine (the same on
    both nodes), the other ended ``replaced`` and its socket closed with that reason."""
    async with cluster(redis, tmp_path, "node-a", "node-b") as nodes:
        for round_ in range(5):
            machine = f"racer-{round_}"
            welcomes: dict[str, wire.Welcome] = {}
            sockets: dict[str, trio_websocket.WebSocketConnection] = {}
            async with AsyncExitStack() as stack:
                for node in nodes:
                    sockets[node.name] = await stack.enter_async_context(
                        open_agent(node.port, AGENT))
                async with trio.open_nursery() as nursery:  # both at once
                    for node in nodes:
                        nursery.start_soon(hello_into, welcomes, node.name,
                                           sockets[node.name], machine)
                ids = {w.session_id for w in welcomes.values()}
                assert len(ids) == 2
                with trio.fail_after(10):
                    while True:  # both nodes agree on the one live session
                        live = [await live_by_machine(node.url) for node in nodes]
                        if all(len(each.get(machine, ())) == 1 for each in live) and \
                                live[0][machine] == live[1][machine]:
                            break
                        await trio.sleep(0.05)
                [winner] = live[0][machine]
                [loser_node] = [n for n, w in welcomes.items() if w.session_id != winner]
                with trio.fail_after(10):  # the loser's socket is closed: replaced
                    try:
                        while True:
                            await sockets[loser_node].get_message()
                    except trio_websocket.ConnectionClosed as closed:
                        assert closed.reason is not None
                        assert closed.reason.reason == "replaced"
                loser = welcomes[loser_node].session_id
                async with api(nodes[0].url) as client:
                    detail = (await client.get(f"/v1/sessions/{loser}")).json()["data"]
                assert (detail["status"], detail["reason"]) == ("DISCONNECTED", "replaced")


async def test_a_rolling_restart_under_agents_ends_no_session(
        redis: RedisServer, tmp_path: Path) -> None:
    """SIGTERM one node, then the other (each started again before the next goes), under 300
    agents: each node drains (1012 ``node_draining``), its agents resume on the other, and no
    session ends; the event log and the receiver agree."""
    async with watched(redis, tmp_path) as watch:

        async def roll() -> None:
            for node in watch.nodes:
                node.signal(signal.SIGTERM)
                assert node.proc is not None
                with trio.fail_after(20):
                    assert await node.proc.wait() == 0
                node.name += "-2"  # a new process: a new node id
                await node.start()
                await trio.sleep(3)

        result = await fleet_under(watch.nodes, roll, agents=300, duration=35, fault_at=6)
        assert result.failovers >= 250, result.summary()  # every agent moved at least once
        await watch.invariants_hold(300)

