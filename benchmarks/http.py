"""HTTP benchmark: ``GET /v1/sessions?status=CONNECTED&limit=20`` vs a trivial Quart-Trio route.

One process serves the real app (Hypercorn's trio worker, one engine) with 100,000 sessions in
its engine (90% CONNECTED through ``agent_hello``, 10% PENDING through ``create_session``), plus
one trivial route (``GET /trivial`` answering ``"ok"``) on the same app. wrk drives both at 64
connections, in the same run and against the same server, alternating: trivial, list, trivial,
list. Figures are the means of the two rounds of each.

Needs wrk (Debian/Ubuntu)::

    apt-get update && apt-get install -y wrk

Run::

    .venv/bin/python benchmarks/http.py                  # 100,000 sessions, 2 x 10 s per route
    .venv/bin/python benchmarks/http.py --sessions 10000 --duration 5

Last line: one JSON object with ``list_rps``, ``trivial_rps``, ``list_vs_trivial``,
``list_p99_ms`` and ``trivial_p99_ms``. Targets: ``list_vs_trivial >= 0.8`` and list p99 <= 1.5x
trivial p99.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and this file, named http.py,
# would shadow the standard library's ``http`` (which hypercorn imports). Drop that entry.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import gc
import json
import re
import shutil
import socket
import time
from functools import partial

import trio

from tether.engine import Engine, EngineConfig
from tether.engine.testing import NullTransport
from tether.http import HttpSettings, KeyStore, create_app, serve, server_config

API_KEY = "cmd_benchmark_key_000000000000000"
WORKSPACE = "ws_bench"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def fill(engine: Engine, sessions: int) -> None:
    transport = NullTransport()
    connected = sessions * 9 // 10
    started = time.perf_counter()
    for i in range(sessions):
        machine, host = f"mach_{i:06d}", f"host-{i % 1000:03d}"
        if i < connected:
            await engine.agent_hello(WORKSPACE, transport, machine_id=machine,
                                     machine_hostname=host)
        else:
            await engine.create_session(WORKSPACE, machine, host)
        if i % 1000 == 999:
            await trio.sleep(0)
    gc.collect()
    gc.freeze()
    say(f"[fill] {sessions:,} sessions ({connected:,} CONNECTED) in "
        f"{time.perf_counter() - started:.1f} s; gc.freeze()")


def parse_wrk(output: str) -> tuple[float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    assert p99 is not None, output
    return rps, float(p99.group(1)) * _UNITS[p99.group(2)]


async def wrk(url: str, connections: int, duration: int, threads: int) -> tuple[float, float]:
    result = await trio.run_process(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         "-H", f"Authorization: Bearer {API_KEY}", url],
        capture_stdout=True, capture_stderr=True,
    )
    output = result.stdout.decode()
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if errors:
        raise SystemExit(f"wrk saw error responses on {url}:\n{output}")
    return parse_wrk(output)


async def main(args: argparse.Namespace) -> dict[str, float]:
    keys = KeyStore()
    keys.add_key("api", API_KEY, WORKSPACE)
    day = 24 * 3600.0
    config = EngineConfig(heartbeat_timeout=day, pending_timeout=day, grace_period=day)
    async with Engine(config) as engine:
        await fill(engine, args.sessions)
        app = create_app(engine, keys, HttpSettings())

        @app.route("/trivial")
        async def trivial() -> str:
            return "ok"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            await nursery.start(partial(serve, app, server_config("127.0.0.1", port),
                                        shutdown_trigger=stop.wait))
            base = f"http://127.0.0.1:{port}"
            list_url = f"{base}/v1/sessions?status=CONNECTED&limit=20"
            urls = {"trivial": f"{base}/trivial", "list": list_url}
            say(f"[warm] {args.warmup} s each")
            for url in urls.values():
                await wrk(url, args.connections, args.warmup, args.threads)
            figures: dict[str, list[tuple[float, float]]] = {"trivial": [], "list": []}
            for round_ in range(args.rounds):
                for name, url in urls.items():
                    rps, p99 = await wrk(url, args.connections, args.duration, args.threads)
                    figures[name].append((rps, p99))
                    say(f"[round {round_ + 1}] {name:8s} {rps:9.1f} req/s  p99 {p99:7.2f} ms")
            stop.set()
        engine.shutdown()

    def mean(name: str, i: int) -> float:
        return sum(f[i] for f in figures[name]) / len(figures[name])

    list_rps, trivial_rps = mean("list", 0), mean("trivial", 0)
    return {
        "list_rps": round(list_rps, 1),
        "trivial_rps": round(trivial_rps, 1),
        "list_vs_trivial": round(list_rps / trivial_rps, 3),
        "list_p99_ms": round(mean("list", 1), 2),
        "trivial_p99_ms": round(mean("trivial", 1), 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per route")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get update && apt-get install -y wrk")
    print(json.dumps(trio.run(main, args)))
