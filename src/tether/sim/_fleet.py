"""A whole fleet over the wire: spread over processes, live progress, the self-check, a summary.

One process holds at most ``agents_per_process`` agents (by default its open-files limit less
a reserve: every agent is a socket). A fleet that fits runs in this process; a bigger one runs
as that many ``tether.sim._worker`` processes, each a slice of the same seeded fleet, and this
process collects their progress and expectations. Once the run is over (agents still
heartbeating), the self-check reads every session over REST; then the agents say goodbye.
With ``api_key``, a share ``operators`` of the machines also get operator visits over REST,
and a share ``observers`` an observer on an attach stream; a share ``busy`` of the agents
stream output continuously. Each stream client's bytes are checked against its agent's in the
process that ran both (``output_mismatches``).

``url`` may name a cluster's nodes, comma-separated: agents are spread over them and move to
another node on every reconnection, operators and the self-check use a node other than the
agent's (see ``_wire``), and the progress counts come from the first node.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from typing import Any, TextIO

import httpx
import msgspec
import trio

from ._agent import SessionExpect
from ._behaviour import Kind, parse_weights, plan_fleet
from ._check import check_over_rest
from ._result import SimResult
from ._wire import WireConfig, WireFleet, node_urls
from ._worker import WorkerSpec, stats

_STATUSES = ("PENDING", "CONNECTED", "BACKGROUND", "GRACE_PERIOD", "DISCONNECTED", "ERROR")
_OPERATOR_STATS = ("operator_visits", "operator_commands", "operator_answered",
                   "operator_refused", "operator_skipped")
#: Counts summed over the shares into the summary under the same names.
_OUTPUT_STATS = ("output_bytes", "output_resent", "stream_clients", "stream_reattaches",
                 "stream_gaps", "stream_refused", "stream_bytes", "output_mismatches")
_SUMMED_STATS = (*_OPERATOR_STATS, "ended_by_server", "failovers", "connect_retries",
                 *_OUTPUT_STATS)
_FD_RESERVE = 256


class SimConfig(msgspec.Struct, kw_only=True, frozen=True):
    """``tether sim``'s options."""

    url: str
    agent_token: str
    agents: int
    duration: float
    scenario: str = "mixed"
    seed: int = 0
    api_key: str | None = None
    #: The share of machines that get operator visits (only with ``api_key``).
    operators: float = 0.1
    #: The share of agents whose machines stream output continuously.
    busy: float = 0.1
    #: The share of machines an observer watches through an attach stream (with ``api_key``).
    observers: float = 0.05
    #: The server's ``--output-buffer-bytes``: a stream's gap is honest only beyond it.
    output_retention: int = 1024 * 1024
    #: Whether agents write output at all (off: no output, busy machines or stream clients,
    #: the fleet as it was before sessions had output).
    output: bool = True
    heartbeat_every: float | None = None
    ramp: float | None = None  # seconds over which agents start (default: min(5, duration/4))
    agents_per_process: int | None = None
    progress_every: float = 1.0
    margin: float = 2.0


def agents_per_process() -> int:
    """How many agents (sockets) one process can hold under its open-files limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(1, soft - _FD_RESERVE) if soft != resource.RLIM_INFINITY else 1_000_000


class _Share:
    """One slice of the fleet: its progress and expectations, wherever it runs."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {"connected": 0, "connected_peak": 0, "messages": 0,
                                      "errors": 0, "by_status": {}}
        self.stats.update(dict.fromkeys((*_SUMMED_STATS, "server_replaced"), 0))
        self.sessions: list[SessionExpect] = []
        self.problems: list[str] = []
        self.offset = 0.0  # the parent's trio time at the share's start
        self.ready = trio.Event()


class _LocalShare(_Share):
    def __init__(self, wire: WireConfig, spec: WorkerSpec) -> None:
        super().__init__()
        plans = plan_fleet(spec.agents, wire.duration, weights=parse_weights(spec.scenario),
                           seed=spec.seed, ramp=spec.ramp, first=spec.first, count=spec.count,
                           operators=spec.operators, busy=spec.busy,
                           observers=spec.observers, output=spec.output)
        self.fleet = WireFleet(wire, plans)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fleet.run)
            self.offset = self.fleet.start
            task_status.started()

            async def refresh() -> None:
                while True:
                    self.stats = stats(self.fleet)
                    await trio.sleep(0.25)

            nursery.start_soon(refresh)
            await self.fleet.ready.wait()
            self.sessions = self.fleet.sessions()
            self.stats = stats(self.fleet)
            self.ready.set()
            await self.fleet.done.wait()
            self.stats = stats(self.fleet)
            self.problems = self.fleet.problems
            nursery.cancel_scope.cancel()

    async def finish(self) -> None:
        self.fleet.finish()
        await trio.lowlevel.checkpoint()


class _ProcessShare(_Share):
    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.process: trio.Process | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import subprocess

        # ``-c``, not ``-m tether.sim._worker``: the package imports that module, and runpy
        # warns (on every worker) when it runs a module already imported as ``__main__``.
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-c", "from tether.sim._worker import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        # on stdin, not in argv: the spec holds the agent token and the API key
        await self.process.stdin.send_all(msgspec.json.encode(self.spec) + b"\n")
        started = False
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = msgspec.json.decode(line)
                    if "started" in message:
                        self.offset = trio.current_time()
                        started = True
                        task_status.started()
                    elif "progress" in message:
                        self.stats = message["progress"]
                    elif "ready" in message:
                        self.stats = message["ready"]
                        self.problems = message["problems"]
                        self.sessions = [SessionExpect.from_builtins(s)
                                         for s in message["sessions"]]
                        self.ready.set()
                    elif "final" in message:
                        self.stats = message["final"]
                        self.problems = message["problems"]
        finally:
            code = await self.process.wait()
            if code != 0:
                self.stats["errors"] = self.stats.get("errors", 0) + 1
                self.problems.append(f"worker exited with {code}")
            if not started:
                task_status.started()
            self.ready.set()

    async def finish(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.process.stdin.send_all(b"finish\n")


async def _server_by_status(client: httpx.AsyncClient) -> dict[str, int]:
    counts = {}
    for status in _STATUSES:
        r = await client.get("/v1/sessions", params={"status": status, "limit": 1})
        r.raise_for_status()
        counts[status] = r.json()["meta"]["total"]
    return counts


async def run_sim(config: SimConfig, out: TextIO | None = None) -> SimResult:
    """Run a fleet over the wire against ``config.url``; progress lines go to ``out``."""
    out = out or sys.stderr
    parse_weights(config.scenario)  # fail early on a bad name
    urls = node_urls(config.url)  # and on a bad URL
    ramp = config.ramp if config.ramp is not None else min(5.0, config.duration / 4)
    operators = config.operators if config.api_key else 0.0
    observers = config.observers if config.api_key else 0.0
    notes = []
    if config.operators > 0 and not config.api_key:
        notes.append("operators skipped: they need --api-key")
    if config.observers > 0 and not config.api_key:
        notes.append("observers skipped: they need --api-key")
    wire = WireConfig(url=config.url, agent_token=config.agent_token, duration=config.duration,
                      heartbeat_every=config.heartbeat_every,
                      api_key=config.api_key if operators > 0 or observers > 0 else None,
                      output_retention=config.output_retention)
    per_process = config.agents_per_process or agents_per_process()
    processes = max(1, math.ceil(config.agents / per_process))
    size = math.ceil(config.agents / processes)
    specs = [WorkerSpec(wire=wire, agents=config.agents, first=k * size,
                        count=min(size, config.agents - k * size), seed=config.seed,
                        scenario=config.scenario, ramp=ramp, operators=operators,
                        busy=config.busy, observers=observers, output=config.output)
             for k in range(processes)]
    shares: list[_LocalShare | _ProcessShare] = (
        [_LocalShare(wire, specs[0])] if processes == 1 else [_ProcessShare(s) for s in specs]
    )
    wall = time.perf_counter()
    api: httpx.AsyncClient | None = None
    if config.api_key:
        api = httpx.AsyncClient(base_url=urls[0], timeout=30,
                                headers={"Authorization": f"Bearer {config.api_key}"})
    mismatches = 0
    problems: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            for share in shares:
                await nursery.start(share.run)
            start = trio.current_time()
            progress = trio.CancelScope()

            async def show_progress() -> None:
                with progress:
                    await _progress(shares, api, start, config.progress_every, out)

            nursery.start_soon(show_progress)
            for share in shares:
                await share.ready.wait()
            elapsed = trio.current_time() - start
            messages_at_ready = sum(s.stats["messages"] for s in shares)
            progress.cancel()
            sessions: list[SessionExpect] = []
            for share in shares:
                delta = share.offset - start
                for s in share.sessions:
                    s.since += delta
                    sessions.append(s)
            by_status: dict[str, int] = {}
            if api is not None:
                print(f"checking {len(sessions)} sessions over REST ...", file=out, flush=True)

                def report(expect: SessionExpect, found: list[str]) -> None:
                    if len(problems) < 100:
                        problems.append(f"mismatch {expect.session_id} ({expect.machine_id}, "
                                        f"{expect.kind.value}): {'; '.join(found)}")

                mismatches = await check_over_rest(
                    urls, config.api_key or "", sessions,
                    lambda: trio.current_time() - start, margin=config.margin, report=report,
                )
                with contextlib.suppress(httpx.HTTPError):  # then the agents' view below
                    by_status = await _server_by_status(api)
            if not by_status:
                for share in shares:
                    for k, v in share.stats["by_status"].items():
                        by_status[k] = by_status.get(k, 0) + v
            for share in shares:
                await share.finish()
    finally:
        if api is not None:
            await api.aclose()
    kinds: dict[str, int] = {}
    for p in plan_fleet(config.agents, config.duration, weights=parse_weights(config.scenario),
                        seed=config.seed, ramp=ramp):
        kinds[p.kind.value] = kinds.get(p.kind.value, 0) + 1
    for share in shares:
        problems.extend(share.problems)
    replaced = sum(s.stats.get("server_replaced", 0) for s in shares)
    if replaced:
        notes.append(f"{replaced} sessions were replaced under their agents: another hello for "
                     "the same machine (another tether sim with the same --seed?)")
    return SimResult(
        agents=config.agents,
        connected_peak=sum(s.stats["connected_peak"] for s in shares),
        messages_sent=sum(s.stats["messages"] for s in shares),
        messages_per_s=round(messages_at_ready / elapsed, 1) if elapsed > 0 else 0.0,
        errors=sum(s.stats["errors"] for s in shares), mismatches=mismatches,
        sessions=len(sessions), sessions_by_status=by_status, checked=api is not None,
        duration_s=round(elapsed, 3), wall_s=round(time.perf_counter() - wall, 3),
        processes=processes, nodes=len(urls), seed=config.seed, scenario=config.scenario,
        kinds={k: kinds[k] for k in sorted(kinds)},
        **{k: sum(s.stats.get(k, 0) for s in shares) for k in _SUMMED_STATS},
        notes=notes, problems=problems[:100],
    )


async def _progress(
    shares: list[_LocalShare | _ProcessShare], api: httpx.AsyncClient | None, start: float,
    every: float, out: TextIO,
) -> None:
    last_messages, last_at = 0, start
    while True:
        await trio.sleep(every)
        now = trio.current_time()
        messages = sum(s.stats["messages"] for s in shares)
        rate = (messages - last_messages) / (now - last_at) if now > last_at else 0.0
        last_messages, last_at = messages, now
        connected = sum(s.stats["connected"] for s in shares)
        errors = sum(s.stats["errors"] for s in shares)
        ended = sum(s.stats.get("ended_by_server", 0) for s in shares)
        source, counts = "agents' view", _merge(s.stats["by_status"] for s in shares)
        if api is not None:
            try:
                with trio.move_on_after(every):
                    counts = await _server_by_status(api)
                    source = "server"
            except httpx.HTTPError:
                pass
        shown = " ".join(f"{k}={v}" for k, v in counts.items() if v)
        print(f"[{now - start:6.1f}s] connected {connected}  msgs/s {rate:8.1f}  "
              f"errors {errors}  {f'ended by server {ended}  ' if ended else ''}"
              f"sessions ({source}): {shown}", file=out, flush=True)


def _merge(items: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for counts in items:
        for k, v in counts.items():
            merged[k] = merged.get(k, 0) + v
    return merged


__all__ = ["Kind", "SimConfig", "agents_per_process", "run_sim"]
