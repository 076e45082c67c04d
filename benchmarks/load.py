"""Load benchmark: 5,000 agents over WebSockets, the server and the agents in separate processes.

Three processes: this one (orchestrates, polls the list endpoint, reads /proc), a server
(``--role server``: the project's app on Hypercorn's trio worker plus a bare Quart-Trio
WebSocket route ``/bare`` that only decodes frames, and ``/bench/*`` routes), and the agents
(``--role agents``: a minimal WebSocket client on trio sockets speaking the agent protocol,
so that on 2 cores the client is not what limits the saturation phases).

The server's per-socket frame token bucket (``agent_frame_rate``/``agent_frame_burst``) is set
far above anything this benchmark sends (1,000,000 frames/s, burst 1,000,000, against at most
``--frames`` frames per agent per round), so the bucket's code runs on every frame but never
throttles: the saturation phase measures the server, not the throttle.

Phases:
1. connect: every agent says hello on ``/v1/agent``; server RSS before and after gives
   ``server_rss_per_agent_kb``.
2. steady: every agent heartbeats (with telemetry) every 5 s (1,000 messages/s at 5,000 agents)
   while this process polls ``GET /v1/sessions?status=CONNECTED&limit=20`` back to back:
   ``list_p50_ms`` / ``list_p99_ms``.
3. saturation: every agent also opens a second socket, on ``/bare``. Then rounds, alternately
   on the Tether sockets and on the bare ones (``--rounds`` of each): in a round every agent
   writes a fixed burst of ``--frames`` heartbeats with telemetry at once, and the rate is the
   round's frames divided by the time until the *server* has processed them all. The flood is
   bounded (agents x frames: 80,000 frames, ~18 MB, at the defaults), so no backlog outlives its
   round. The server counts: for Tether, the sessions' ``version`` (one per heartbeat) summed
   over the engine's records by a watcher task every 25 ms (and checked at the end of each
   round against the same sum through the engine's public queries); for ``/bare``, the frames
   the route decoded. The round starts when the server is armed (just before the agents are
   told to write) and ends at the watcher's first sight of the full count, on the server's
   clock. ``ingest_msgs_per_s`` / ``bare_ws_msgs_per_s`` are the medians over the rounds.

Run::

    .venv/bin/python benchmarks/load.py                 # 5,000 agents, ~2 minutes
    .venv/bin/python benchmarks/load.py --agents 500 --frames 64 --steady 10
    .venv/bin/python benchmarks/load.py --gc-young 0    # the server on Python's GC thresholds

The server tunes its garbage collector as ``tether serve`` does (``tether.http.tune_gc``).

Last line: one JSON object. Targets: ``ingest_vs_bare >= 0.8``, ``list_p99_ms <= 50``,
``server_rss_per_agent_kb <= 64``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and benchmarks/http.py there
# would shadow the standard library's ``http`` (which hypercorn and httpx import). Drop it.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import time
from functools import partial

API_KEY = "cmd_load_bench_key_00000000000"
AGENT_TOKEN = "agt_load_bench_token_000000000"
WORKSPACE = "ws_load"
WATCH_EVERY = 0.025  # seconds between the server-side watcher's looks at the counters
_HZ = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the server process ------------------------------------------------------------------------


def run_server(port: int, gc_young: int, redis: str | None = None) -> None:
    import gc

    import trio
    from quart import request, websocket

    from tether import wire
    from tether.engine import Engine, EngineConfig
    from tether.engine.testing import total_version
    from tether.http import HttpSettings, KeyStore, create_app, serve, server_config, tune_gc

    keys = KeyStore()
    keys.add_key("api", API_KEY, WORKSPACE)
    keys.add_key("agent", AGENT_TOKEN, WORKSPACE)
    config = EngineConfig(heartbeat_timeout=600, grace_period=600)
    bare_count = 0
    welcome = wire.encode(wire.Welcome(
        session_id="sess_bare", resume_token="rt_bare", heartbeat_interval=5,
        heartbeat_timeout=600, grace_period=600, output_offset=0)).decode()
    # armed round: which counter, the count that means "all processed", when it started,
    # when the watcher first saw the count, and (time, count) samples along the way
    watch: dict[str, object] = {"key": None}
    # seconds spent in the cyclic garbage collector (a diagnostic: its share of each round)
    gc_time = [0.0, 0.0, 0, 0.0]  # total, start of the current one, full ones, their seconds

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_time[1] = time.perf_counter()
        else:
            spent = time.perf_counter() - gc_time[1]
            gc_time[0] += spent
            if info["generation"] == 2:
                gc_time[2] += 1
                gc_time[3] += spent

    gc.callbacks.append(on_gc)

    async def main() -> None:
        from contextlib import AsyncExitStack

        from tether.store import RedisStore

        async with AsyncExitStack() as stack:
            store = None
            if redis:  # the state in Redis, as ``tether serve --redis``: a fresh prefix
                store = await stack.enter_async_context(
                    RedisStore(redis, prefix=f"load{os.getpid()}:"))
            engine = await stack.enter_async_context(Engine(config, store=store))
            # high enough never to throttle (see the module docstring), yet still on the path
            settings = HttpSettings(agent_frame_rate=1_000_000.0, agent_frame_burst=1_000_000)
            app = create_app(engine, keys, settings)
            def count(key: str) -> int:
                if key == "bare":
                    return bare_count
                return total_version(engine)

            def public_versions() -> tuple[int, int]:
                """The sum of ``version`` through the engine's public queries, and sessions."""
                versions = offset = 0
                while True:
                    page = engine.list_sessions(WORKSPACE, limit=100, offset=offset)
                    for s in page.data:
                        versions += engine.get_session(WORKSPACE, s.session_id).version
                    offset += len(page.data)
                    if not page.meta.has_more:
                        return versions, offset

            async def watcher() -> None:
                while True:
                    await trio.sleep(WATCH_EVERY)
                    key = watch["key"]
                    if key is None or watch["done"] is not None:
                        continue
                    now, n = trio.current_time(), count(str(key))
                    samples = watch["samples"]
                    assert isinstance(samples, list)
                    samples.append((now, n))
                    if n >= int(watch["target"]):  # type: ignore[call-overload]
                        watch["done"] = now
                        watch["gc_s"] = gc_time[0] - float(watch["gc_s"])  # type: ignore[arg-type]
                        watch["gc_full"] = gc_time[2] - int(watch["gc_full"])  # type: ignore[call-overload]
                        watch["gc_full_s"] = gc_time[3] - float(watch["gc_full_s"])  # type: ignore[arg-type]

            @app.websocket("/bare")
            async def bare() -> None:
                nonlocal bare_count
                decode = wire.decode_agent_frame
                decode(await websocket.receive())  # the hello
                await websocket.send(welcome)
                while True:
                    decode(await websocket.receive())
                    bare_count += 1

            @app.route("/bench/stats")
            async def stats() -> dict[str, float]:
                out: dict[str, float] = {"t": trio.current_time(), "tether": count("tether"),
                                         "bare": bare_count}
                if request.args.get("full"):
                    t = time.perf_counter()
                    out["tether_public"], out["sessions"] = public_versions()
                    out["walk_ms"] = (time.perf_counter() - t) * 1000
                return out

            @app.route("/bench/arm", methods=["POST"])
            async def arm() -> dict[str, object]:
                key = request.args["key"]
                base = count(key)
                now = trio.current_time()
                watch.update(key=key, base=base, target=base + int(request.args["frames"]),
                             t0=now, done=None, samples=[(now, base)], gc_s=gc_time[0],
                             gc_full=gc_time[2], gc_full_s=gc_time[3])
                return {"t0": now, "base": base}

            @app.route("/bench/watch")
            async def watched() -> dict[str, object]:
                return dict(watch)

            server = server_config("127.0.0.1", port, settings)
            server.backlog = 4096
            tune_gc(gc_young)  # as ``tether serve`` does (``--gc-young``)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher)
                await nursery.start(partial(serve, app, server,
                                            shutdown_trigger=trio.sleep_forever))
                print("ready", flush=True)

    trio.run(main)


# -- the agents process ------------------------------------------------------------------------


def upgrade_request(path: str, port: int, nonce: bytes, token: str) -> bytes:
    """The HTTP request that opens an agent WebSocket on 127.0.0.1:``port`` (``nonce``: the
    16 bytes of its ``Sec-WebSocket-Key``)."""
    key = base64.b64encode(nonce).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


def ws_frame(text: str) -> bytes:
    """A client text frame (FIN, masked with a zero key, so the payload goes as it is)."""
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2)
    return head + b"\0\0\0\0" + payload


def run_agents(port: int, agents: int, every: float, per_round: int) -> None:
    """The agents: a minimal WebSocket client on trio sockets, so the client's own cost per
    message (pre-built frames, a round's burst written in one send) stays well below the
    server's."""
    import random

    import trio

    from tether import wire

    rng = random.Random(1)
    frames = [ws_frame(wire.encode(wire.Heartbeat(telemetry=wire.Telemetry(
        cpu_percent=round(rng.uniform(0, 100), 1), memory_percent=round(rng.uniform(0, 100), 1),
        disk_percent=round(rng.uniform(0, 100), 1), network_rx_bytes=k * 1000,
        network_tx_bytes=k * 400, uptime_seconds=k))).decode()) for k in range(64)]
    bursts = [b"".join(frames[(k + j) & 63] for j in range(per_round)) for k in range(64)]
    state = {"sent": 0, "connected": 0, "bare": 0, "errors": 0, "round": 0, "done": 0}
    steady_over = trio.Event()
    to_bare = trio.Event()
    quit_ = trio.Event()
    plan: list[str] = []  # the rounds' targets, "tether" or "bare"
    go = [trio.Event() for _ in range(1000)]
    limit = trio.Semaphore(64)

    async def connect(path: str, i: int) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(upgrade_request(path, port, i.to_bytes(16), AGENT_TOKEN))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise OSError("closed during the handshake")
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(head.split(b"\r\n")[0].decode())
        await stream.send_all(ws_frame(wire.encode(wire.Hello(
            machine_id=f"load-{i:06d}", machine_hostname=f"load-host-{i % 100:02d}")).decode()))
        while len(buffer) < 2 or len(buffer) < 2 + (buffer[1] & 0x7F) + (
                2 if buffer[1] & 0x7F == 126 else 0):
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise OSError("closed before welcome")
            buffer += chunk
        n = buffer[1] & 0x7F
        body = buffer[4:4 + int.from_bytes(buffer[2:4])] if n == 126 else buffer[2:2 + n]
        frame = wire.decode_server_frame(body)
        if not isinstance(frame, wire.Welcome):
            raise OSError(f"no welcome: {frame}")
        return stream

    async def agent(i: int) -> None:
        try:
            async with limit:
                stream = await connect("/v1/agent", i)
            state["connected"] += 1
            phase = trio.current_time() + (i % 1000) * every / 1000
            with trio.move_on_at(float("inf")) as scope:
                steady_scopes.append(scope)
                if steady_over.is_set():
                    scope.cancel()
                while True:
                    await trio.sleep_until(phase)
                    await stream.send_all(frames[i & 63])
                    state["sent"] += 1
                    phase += every
            await to_bare.wait()
            async with limit:
                bare = await connect("/bare", i)
            state["bare"] += 1
            for r in range(len(go)):
                await go[r].wait()
                await (stream if plan[r] == "tether" else bare).send_all(bursts[(i + r) & 63])
                state["sent"] += per_round
                state["done"] += 1
        except OSError as error:
            state["errors"] += 1
            say(f"agent {i}: {error!r}")

    steady_scopes: list[trio.CancelScope] = []

    async def control() -> None:
        stdin = trio.lowlevel.FdStream(0)
        buffer = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                quit_.set()
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                cmd = line.decode().strip()
                if cmd == "steady-over":
                    steady_over.set()
                    for scope in steady_scopes:
                        scope.cancel()
                elif cmd == "bare":
                    to_bare.set()
                elif cmd in ("tether", "bare-round"):
                    plan.append("tether" if cmd == "tether" else "bare")
                    state["round"] = len(plan)
                    state["done"] = 0
                    go[len(plan) - 1].set()
                elif cmd == "quit":
                    quit_.set()
                    return

    async def report() -> None:
        while True:
            print(json.dumps(state), flush=True)
            await trio.sleep(0.5)

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(report)
            outer.start_soon(control)
            async with trio.open_nursery() as nursery:
                for i in range(agents):
                    nursery.start_soon(agent, i)
                await quit_.wait()
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()

    trio.run(main)


# -- the orchestrator --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


class Agents:
    """The agents process: commands on its stdin, its state (JSON lines) on its stdout."""

    def __init__(self, port: int, agents: int, every: float, per_round: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "agents", "--port", str(port), "--agents",
             str(agents), "--every", str(every), "--frames", str(per_round)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.state: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the agents process ended")
        self.state = json.loads(line)
        return self.state

    def wait_for(self, key: str, value: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.read()[key] + self.state["errors"] < value:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {key}={value}: {self.state}")
        if self.state["errors"]:
            raise SystemExit(f"agents failed: {self.state}")

    def tell(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.read()


def main(args: argparse.Namespace) -> dict[str, object]:
    import threading

    import httpx

    port = free_port()
    redis = ["--redis", args.redis] if getattr(args, "redis", None) else []
    server = subprocess.Popen([sys.executable, __file__, "--role", "server", "--port", str(port),
                               "--gc-young", str(args.gc_young), *redis],
                              stdout=subprocess.PIPE, text=True)
    agents: Agents | None = None
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"},
                              timeout=120)

        def get(path: str, **params: object) -> dict[str, float]:
            return client.get(path, params=params).json()  # type: ignore[no-any-return]

        time.sleep(1)
        rss_before = proc_status_kb(server.pid, "VmRSS")
        say(f"[server] pid {server.pid} on {base}, RSS {rss_before / 1024:.1f} MB")
        started = time.monotonic()
        agents = Agents(port, args.agents, args.every, args.frames)
        agents.wait_for("connected", args.agents, timeout=300)
        say(f"[connect] {args.agents:,} agents in {time.monotonic() - started:.1f} s")
        agents.drain(3)
        rss_after = proc_status_kb(server.pid, "VmRSS")
        per_agent = (rss_after - rss_before) / args.agents
        say(f"[rss] {rss_before / 1024:.1f} MB -> {rss_after / 1024:.1f} MB: "
            f"{per_agent:.1f} KB per agent")

        # the agents' state lines must be read or their pipe fills: a thread does it from here on
        reader_stop = threading.Event()

        def keep_reading() -> None:
            assert agents is not None
            while not reader_stop.is_set():
                agents.read()

        threading.Thread(target=keep_reading, daemon=True).start()

        # steady: heartbeats every `every` s, list polled back to back
        s0, c0 = get("/bench/stats"), cpu_s(server.pid)
        latencies = []
        end = time.monotonic() + args.steady
        while time.monotonic() < end:
            t = time.perf_counter()
            r = client.get("/v1/sessions", params={"status": "CONNECTED", "limit": 20})
            latencies.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json()["meta"]["total"] == args.agents, r.text
        s1, c1 = get("/bench/stats"), cpu_s(server.pid)
        steady_rate = (s1["tether"] - s0["tether"]) / (s1["t"] - s0["t"])
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        say(f"[steady] {len(latencies)} lists: p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
            f"heartbeats ingested {steady_rate:.0f}/s; server CPU "
            f"{(c1 - c0) / (s1['t'] - s0['t']):.0%}")

        # saturation: a second socket per agent on /bare, then bounded rounds, alternating
        agents.tell("steady-over")
        started = time.monotonic()
        agents.tell("bare")
        while agents.state["bare"] + agents.state["errors"] < args.agents:
            if time.monotonic() - started > 300:
                raise SystemExit(f"bare connections timed out: {agents.state}")
            time.sleep(0.2)
        if agents.state["errors"]:
            raise SystemExit(f"agents failed: {agents.state}")
        say(f"[bare] {args.agents:,} more sockets on /bare in {time.monotonic() - started:.1f} s;"
            f" server RSS {proc_status_kb(server.pid, 'VmRSS') / 1024:.1f} MB")
        time.sleep(1)  # the last steady heartbeats are in before the first round is armed
        total = args.agents * args.frames
        rates: dict[str, list[float]] = {"tether": [], "bare": []}
        mids: dict[str, list[float]] = {"tether": [], "bare": []}
        cpus: dict[str, list[float]] = {"tether": [], "bare": []}
        gcs: dict[str, list[float]] = {"tether": [], "bare": []}
        for r in range(2 * args.rounds):
            key = ("tether", "bare")[r % 2]
            armed = client.post("/bench/arm", params={"key": key, "frames": total}).json()
            c0 = cpu_s(server.pid)
            agents.tell("tether" if key == "tether" else "bare-round")
            deadline = time.monotonic() + 300
            while True:
                time.sleep(0.25)
                w = get("/bench/watch")
                if w["done"] is not None:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"round {r} ({key}) did not finish: {w}")
            c1 = cpu_s(server.pid)
            span = w["done"] - armed["t0"]
            rate = total / span
            # the middle of the round, 10% to 90% of the frames: start and end effects left out
            samples = w["samples"]
            lo = next(s for s in samples if s[1] - armed["base"] >= 0.1 * total)
            hi = next(s for s in samples if s[1] - armed["base"] >= 0.9 * total)
            mid = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else rate
            cpu = (c1 - c0) / span
            rates[key].append(rate)
            mids[key].append(mid)
            cpus[key].append(cpu)
            gcs[key].append(w["gc_s"] / span)
            check = ""
            if key == "tether":
                full = get("/bench/stats", full=1)
                assert full["tether_public"] == full["tether"], full
                assert full["tether"] - armed["base"] == total, (full, armed, total)
                check = f"; public sum agrees (walk {full['walk_ms']:.0f} ms)"
            else:
                assert get("/bench/stats")["bare"] - armed["base"] == total
            say(f"[saturation {r + 1}/{2 * args.rounds}] {key}: {total:,} frames in "
                f"{span:.2f} s = {rate:,.0f} msgs/s (10-90%: {mid:,.0f}/s), server CPU "
                f"{cpu:.0%}, in GC {w['gc_s'] / span:.0%} ({w['gc_full']} full: "
                f"{w['gc_full_s']:.2f} s){check}")
            time.sleep(0.5)
        peak = proc_status_kb(server.pid, "VmHWM")
        agents.tell("quit")
        reader_stop.set()
        agents.proc.wait(timeout=60)
        client.close()
        ingest = statistics.median(rates["tether"])
        bare = statistics.median(rates["bare"])
        return {
            "agents": args.agents,
            "server_gc_young": args.gc_young,
            "ingest_msgs_per_s": round(ingest, 1),
            "bare_ws_msgs_per_s": round(bare, 1),
            "ingest_vs_bare": round(ingest / bare, 3) if bare else 0.0,
            "list_p50_ms": round(p50, 2),
            "list_p99_ms": round(p99, 2),
            "server_rss_per_agent_kb": round(per_agent, 1),
            "steady_heartbeats_per_s": round(steady_rate, 1),
            "lists_polled": len(latencies),
            "frames_per_round": total,
            "ingest_rounds": [round(x) for x in rates["tether"]],
            "bare_rounds": [round(x) for x in rates["bare"]],
            "ingest_mid_msgs_per_s": round(statistics.median(mids["tether"]), 1),
            "bare_mid_msgs_per_s": round(statistics.median(mids["bare"]), 1),
            "server_cpu_ingest": round(statistics.median(cpus["tether"]), 2),
            "server_cpu_bare": round(statistics.median(cpus["bare"]), 2),
            "server_gc_share_ingest": round(statistics.median(gcs["tether"]), 2),
            "server_gc_share_bare": round(statistics.median(gcs["bare"]), 2),
            "server_rss_peak_mb": round(peak / 1024, 1),
        }
    finally:
        if agents is not None and agents.proc.poll() is None:
            agents.proc.kill()
            agents.proc.wait()
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["main", "server", "agents"], default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--every", type=float, default=5.0, help="steady heartbeat period (s)")
    parser.add_argument("--steady", type=float, default=20.0, help="seconds of list polling")
    parser.add_argument("--frames", type=int, default=16,
                        help="frames each agent writes per saturation round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="saturation rounds on each route (alternating)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="the server's state in Redis (as tether serve --redis); "
                             "benchmarks/redis_store.py compares the two")
    parser.add_argument("--gc-young", type=int, default=None,
                        help="the server's young-generation GC threshold, as tether serve's "
                             "--gc-young (default: tether serve's; 0: Python's own, 700)")
    args = parser.parse_args()
    if args.gc_young is None:
        from tether.http import DEFAULT_GC_YOUNG

        args.gc_young = DEFAULT_GC_YOUNG
    if args.role == "server":
        run_server(args.port, args.gc_young, args.redis)
    elif args.role == "agents":
        run_agents(args.port, args.agents, args.every, args.frames)
    else:
        result = main(args)
        result["targets_met"] = bool(
            float(result["ingest_vs_bare"]) >= 0.8  # type: ignore[arg-type]
            and float(result["list_p99_ms"]) <= 50  # type: ignore[arg-type]
            and float(result["server_rss_per_agent_kb"]) <= 64  # type: ignore[arg-type]
        )
        print(json.dumps(result))
