"""Redis-backed state: what it costs against memory, and what a restart costs.

Starts its own ``redis-server`` (Debian's package; AOF ``everysec``, as the README
recommends) on a free 127.0.0.1 port in a temporary directory, and measures, in one run:

1. ingest: ``benchmarks/load.py``'s WebSocket heartbeat saturation (server and agents in
   their own processes), once in memory and once with ``--redis``, same agents and frames:
   ``redis_vs_memory_ingest`` = the Redis run's ``ingest_msgs_per_s`` / the memory run's
   (target >= 0.8);
2. creation: ``--sessions`` agent hellos (100,000) into an engine on Redis, from 64
   concurrent tasks (each hello waits for its group commit, as a real agent's welcome does),
   against the same in memory: ``create_per_s`` (target >= 5,000) and ``create_vs_memory``;
3. lists: a real ``tether serve --redis`` node started on those sessions (it loads them all),
   ``GET /v1/sessions?status=...&limit=20`` polled over HTTP: ``list_p99_ms`` (target <= 5),
   and ``load_s``, how long the node took to load them;
4. restart: a node with ``--live`` live sessions (10,000: ``--agents`` WebSocket agents
   connected, the rest PENDING), killed with SIGKILL, started again with the same flags:
   ``restart_ready_s``, from the new process's start to every session listed with its agents'
   sessions resumable (target <= 10), and ``resumed_ratio``, the share of the agents that
   reconnect with their resume token and get their same session back (target 1.0).

Run::

    .venv/bin/python benchmarks/redis_store.py                    # ~5 minutes
    .venv/bin/python benchmarks/redis_store.py --sessions 20000 --live 2000 --agents 500 \\
        --ingest-agents 500                                        # quicker

Last line: one JSON object with those keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, benchmarks/ comes first on sys.path and its http.py would shadow the
# standard library's ``http``: drop it (load.py is imported by path below).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

API_KEY = "cmd_redis_bench_key_0000000000"
AGENT_TOKEN = "agt_redis_bench_token_00000000"
WORKSPACE = "ws_redis"
HERE = Path(__file__).resolve().parent


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(*, detached: bool = False) -> Iterator[str]:
    """A redis-server for the block; ``detached``: in a session of its own, so that a Ctrl-C
    at the terminal reaches only the benchmark, which stops it after the nodes using it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, start_new_session=detached)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


# -- 1. ingest -----------------------------------------------------------------------------------


def ingest(args: argparse.Namespace, url: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("load_bench", HERE / "load.py")
    assert spec is not None and spec.loader is not None
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    from tether.http import DEFAULT_GC_YOUNG

    runs = {}
    for mode, redis in (("memory", None), ("redis", url)):
        say(f"[ingest] {mode}: {args.ingest_agents:,} agents, benchmarks/load.py ...")
        ns = argparse.Namespace(agents=args.ingest_agents, every=5.0, steady=5.0, frames=16,
                                rounds=3, gc_young=DEFAULT_GC_YOUNG, redis=redis)
        runs[mode] = load.main(ns)
        say(f"[ingest] {mode}: {runs[mode]['ingest_msgs_per_s']:,.0f} heartbeats/s")
    memory, redis_rate = runs["memory"]["ingest_msgs_per_s"], runs["redis"]["ingest_msgs_per_s"]
    return {"ingest_memory_per_s": memory, "ingest_redis_per_s": redis_rate,
            "redis_vs_memory_ingest": round(redis_rate / memory, 3)}


# -- 2. creation ---------------------------------------------------------------------------------


async def create(n: int, url: str | None, prefix: str) -> float:
    """Sessions per second for ``n`` hellos from 64 concurrent tasks (Redis if ``url``)."""
    import trio

    from tether.engine import Engine, EngineConfig
    from tether.engine.testing import NullTransport
    from tether.store import RedisStore

    config = EngineConfig(grace_period=3600, heartbeat_timeout=3600, pending_timeout=3600)
    store = None if url is None else RedisStore(url, prefix=prefix)

    async def fill(engine: Engine) -> float:
        start = time.perf_counter()

        async def agents(first: int) -> None:
            for i in range(first, n, 64):
                await engine.agent_hello(WORKSPACE, NullTransport(), machine_id=f"m{i:07d}",
                                         machine_hostname=f"host-{i % 1000:04d}")

        async with trio.open_nursery() as nursery:
            for task in range(64):
                nursery.start_soon(agents, task)
        return n / (time.perf_counter() - start)

    if store is None:
        async with Engine(config) as engine:
            rate = await fill(engine)
            engine.shutdown()
            return rate
    async with store, Engine(config, store=store) as engine:
        return await fill(engine)  # the exit hands the sessions over (node_draining)


# -- 3 and 4: real nodes -------------------------------------------------------------------------


class Node:
    """A ``tether serve --redis`` process; ``extra`` flags come last, so they override these
    (benchmarks/cluster.py names its nodes and sets their leases and limits); ``detached``:
    in a session of its own, as ``redis_server``'s."""

    def __init__(self, url: str, prefix: str, port: int, keys: Path, *,
                 node_id: str | None = None, extra: Sequence[str] = (),
                 detached: bool = False) -> None:
        env = {**os.environ, "TETHER_API_KEYS": f"{API_KEY}={WORKSPACE}",
               "TETHER_AGENT_TOKENS": f"{AGENT_TOKEN}={WORKSPACE}"}
        named = [] if node_id is None else ["--node-id", node_id]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether.cli", "serve", "--port", str(port), "--keys",
             str(keys), "--log-level", "ERROR", "--redis", url, "--redis-prefix", prefix,
             "--grace-period", "3600", "--heartbeat-timeout", "3600", "--pending-timeout",
             "3600", *named, *extra], env=env, stdout=subprocess.DEVNULL,
            start_new_session=detached)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def wait_listed(node: Node, total: int, timeout: float = 600) -> float:
    """Seconds from the node's start until ``total`` sessions are listed."""
    import httpx

    with httpx.Client(base_url=node.base, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = client.get("/v1/sessions", params={"limit": 1})
                if r.status_code == 200 and r.json()["meta"]["total"] >= total:
                    return time.monotonic() - node.started
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    raise SystemExit(f"the node did not list {total} sessions within {timeout} s")


def list_latency(node: Node, reps: int, status: str = "GRACE_PERIOD") -> tuple[float, float]:
    import httpx

    latencies = []
    with httpx.Client(base_url=node.base, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for i in range(reps):
            params: dict[str, Any] = {"limit": 20, "status": status}
            if i % 3 == 1:
                params["offset"] = 5000
            elif i % 3 == 2:
                params["machine_hostname"] = f"host-{i % 1000:04d}"
            t = time.perf_counter()
            r = client.get("/v1/sessions", params=params)
            latencies.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


async def hold_agents(base: str, tokens: list[str | None],
                      ready: Callable[[list[Any]], None]) -> list[Any]:
    """One agent per token (``None``: a new session) says hello, 200 at a time; once every
    one has its welcome, ``ready(welcomes)`` runs while all their sockets are still open, and
    then the sockets close."""
    import trio
    import trio_websocket

    from tether import wire

    n = len(tokens)
    welcomes: list[Any] = [None] * n
    url = base.replace("http", "ws", 1) + "/v1/agent"
    headers = [(b"authorization", f"Bearer {AGENT_TOKEN}".encode())]
    connecting = trio.Semaphore(200)  # handshakes at once (the node's accept backlog)
    all_in = trio.Event()
    arrived = 0

    async def agent(i: int) -> None:
        nonlocal arrived
        await connecting.acquire()
        held = True
        try:
            async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
                await ws.send_message(wire.encode(wire.Hello(
                    machine_id=f"agent{i:05d}", machine_hostname="agents",
                    resume_token=tokens[i])).decode())
                welcomes[i] = wire.decode_server_frame(await ws.get_message())
                connecting.release()
                held = False
                arrived += 1
                if arrived == n:
                    all_in.set()
                await trio.sleep_forever()
        except trio_websocket.ConnectionClosed:
            pass  # the node was killed under it
        finally:
            if held:
                connecting.release()

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(agent, i)
        with trio.fail_after(300):
            await all_in.wait()
        ready(welcomes)
        nursery.cancel_scope.cancel()
    return welcomes


def restart(url: str, args: argparse.Namespace, keys: Path) -> dict[str, Any]:
    import httpx
    import trio

    port = free_port()
    node = Node(url, "restart:", port, keys)
    try:
        wait_listed(node, 0)
        with httpx.Client(base_url=node.base, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            for i in range(args.live - args.agents):
                r = client.post("/v1/sessions", json={"machine_id": f"pending{i:06d}",
                                                      "machine_hostname": "waiting"})
                assert r.status_code == 201, r.text
        say(f"[restart] {args.live - args.agents:,} PENDING sessions created; "
            f"{args.agents:,} agents connecting ...")
        # The agents stay connected until the kill: the node dies under them.
        first = node
        before = trio.run(hold_agents, node.base, [None] * args.agents,
                          lambda welcomes: first.kill())
        say(f"[restart] {args.live:,} live sessions; node killed with SIGKILL")
        node = Node(url, "restart:", port, keys)
        ready = wait_listed(node, args.live)
        say(f"[restart] every session listed {ready:.2f} s after the new process started")
        tokens = [w.resume_token for w in before]
        after = trio.run(hold_agents, node.base, tokens, lambda welcomes: None)
        resumed = sum(1 for b, a in zip(before, after, strict=True)
                      if getattr(a, "resumed", False) and a.session_id == b.session_id)
        say(f"[restart] {resumed:,} of {args.agents:,} agents resumed their same session")
        return {"restart_ready_s": round(ready, 2),
                "resumed_ratio": round(resumed / args.agents, 4)}
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=2_000)
    parser.add_argument("--ingest-agents", type=int, default=2_000)
    parser.add_argument("--list-reps", type=int, default=600)
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    import trio

    out: dict[str, Any] = {"sessions": args.sessions}
    started = time.monotonic()
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        if not args.skip_ingest:
            out.update(ingest(args, url))
        say(f"[create] {args.sessions:,} hellos in memory, then on Redis ...")
        memory = trio.run(create, args.sessions, None, "")
        redis_rate = trio.run(create, args.sessions, url, "bench:")
        out["create_memory_per_s"] = round(memory)
        out["create_per_s"] = round(redis_rate)
        out["create_vs_memory"] = round(redis_rate / memory, 3)
        say(f"[create] memory {memory:,.0f}/s, Redis {redis_rate:,.0f}/s")
        node = Node(url, "bench:", free_port(), keys)
        try:
            out["load_s"] = round(wait_listed(node, args.sessions), 2)
            say(f"[list] a node loaded {args.sessions:,} sessions in {out['load_s']} s")
            p50, p99 = list_latency(node, args.list_reps)
        finally:
            node.stop()
        out["list_p50_ms"], out["list_p99_ms"] = round(p50, 3), round(p99, 3)
        say(f"[list] over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        out.update(restart(url, args, keys))
    targets = {"redis_vs_memory_ingest": (">=", 0.8), "list_p99_ms": ("<=", 5.0),
               "create_per_s": (">=", 5000), "restart_ready_s": ("<=", 10.0),
               "resumed_ratio": (">=", 1.0)}
    met = {k: (out[k] >= v if op == ">=" else out[k] <= v)
           for k, (op, v) in targets.items() if k in out}
    out["targets_met"] = met
    out["run_s"] = round(time.monotonic() - started, 1)
    say("targets: " + ", ".join(f"{k} {targets[k][0]} {targets[k][1]}: "
                                f"{'met' if ok else 'MISSED'}" for k, ok in met.items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
