"""A worker process: one share of a fleet over the wire, for ``tether sim`` with many agents.

    python -m tether.sim._worker    # stdin: the WorkerSpec as one JSON line, later "finish"

The spec comes on stdin, not in argv: it holds the agent token and the API key, and a
process's arguments are visible to every local user. The worker prints JSON lines on stdout:
``{"started": ...}`` once, ``{"progress": ...}`` every ``progress_every`` seconds,
``{"ready": ..., "sessions": [...]}`` when the run is over (its agents go on heartbeating), and
``{"final": ...}`` after the parent writes ``finish`` on its stdin (its agents say goodbye and
close). Expectation times are seconds since ``started``.
"""

from __future__ import annotations

import os
import sys

import msgspec
import trio

from ._behaviour import parse_weights, plan_fleet
from ._wire import WireConfig, WireFleet


class WorkerSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Which agents of which fleet a worker runs, and how."""

    wire: WireConfig
    agents: int
    first: int
    count: int
    seed: int
    scenario: str
    ramp: float
    operators: float = 0.0
    busy: float = 0.0
    observers: float = 0.0
    output: bool = True
    progress_every: float = 0.5


def stats(fleet: WireFleet) -> dict[str, object]:
    ops = [op for op in fleet.operators if op is not None]
    return {"connected": fleet.connected, "connected_peak": fleet.connected_peak,
            "messages": fleet.messages, "errors": fleet.errors,
            "by_status": fleet.by_status(),
            "operator_visits": sum(op.visits for op in ops),
            "operator_commands": sum(op.commands for op in ops),
            "operator_answered": sum(r.answered for r in fleet.runs),
            "operator_refused": sum(op.refused_steps for op in ops),
            "operator_skipped": sum(op.skipped for op in ops),
            "ended_by_server": sum(r.server_ends for r in fleet.runs),
            "failovers": sum(r.failovers for r in fleet.runs),
            "connect_retries": sum(r.connect_retries for r in fleet.runs),
            "server_replaced": sum(r.server_replaced for r in fleet.runs),
            **fleet.output_result()}


def _emit(obj: object) -> None:
    sys.stdout.write(msgspec.json.encode(obj).decode() + "\n")
    sys.stdout.flush()


async def run_worker(spec: WorkerSpec) -> None:
    plans = plan_fleet(spec.agents, spec.wire.duration, weights=parse_weights(spec.scenario),
                       seed=spec.seed, ramp=spec.ramp, first=spec.first, count=spec.count,
                       operators=spec.operators, busy=spec.busy, observers=spec.observers)
    fleet = WireFleet(spec.wire, plans)
    stdin = trio.lowlevel.FdStream(0)

    async def wait_finish() -> None:
        buffer = b""
        while b"finish" not in buffer:
            chunk = await stdin.receive_some()
            if not chunk:
                break
            buffer += chunk
        fleet.finish()

    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        _emit({"started": True})

        async def progress() -> None:
            while True:
                await trio.sleep(spec.progress_every)
                _emit({"progress": stats(fleet)})

        progress_scope = trio.CancelScope()

        async def progress_until_done() -> None:
            with progress_scope:
                await progress()

        nursery.start_soon(progress_until_done)
        nursery.start_soon(wait_finish)
        await fleet.ready.wait()
        _emit({"ready": stats(fleet), "problems": fleet.problems,
               "sessions": [s.to_builtins() for s in fleet.sessions()]})
        await fleet.done.wait()
        progress_scope.cancel()
        nursery.cancel_scope.cancel()
    _emit({"final": stats(fleet), "problems": fleet.problems})


def _read_spec(fd: int = 0) -> WorkerSpec:
    """The first line on ``fd``, read a byte at a time so nothing after it is consumed."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return msgspec.json.decode(bytes(line), type=WorkerSpec)


def main() -> None:
    trio.run(run_worker, _read_spec())


if __name__ == "__main__":
    main()
