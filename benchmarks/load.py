"""Load benchmark: 5,000 agents over WebSockets, the server and the agents in separate processes.

Three processes: this one (orchestrates, polls the list endpoint, reads /proc), a server
(``--role server``: the project's app on Hypercorn's trio worker plus a bare Quart-Trio
WebSocket route ``/bare`` that only decodes frames, and ``/bench/stats``), and the agents
(``--role agents``: a minimal WebSocket client on trio sockets speaking the agent protocol,
so that on 2 cores the client is not what limits the saturation phases).

Phases:
1. connect: every agent says hello on ``/v1/agent``; server RSS before and after gives
   ``server_rss_per_agent_kb``.
2. steady: every agent heartbeats (with telemetry) every 5 s (1,000 messages/s at 5,000 agents)
   while this process polls ``GET /v1/sessions?status=CONNECTED&limit=20`` back to back:
   ``list_p50_ms`` / ``list_p99_ms``.
3. saturation, Tether: the same agents send heartbeats with telemetry as fast as the server
   takes them. Ingested = the growth of the sessions' ``version`` (one per heartbeat), summed
   through the engine's public queries by ``/bench/stats`` at both ends of the window, per
   second of the server's clock: ``ingest_msgs_per_s``.
4. saturation, bare: the same client process reconnects every agent to ``/bare`` and floods the
   same frames; the route counts what it decoded: ``bare_ws_msgs_per_s``.

Run::

    .venv/bin/python benchmarks/load.py                 # 5,000 agents, ~2 minutes
    .venv/bin/python benchmarks/load.py --agents 500 --window 5 --steady 10

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
import json
import os
import socket
import statistics
import struct
import subprocess
import time
from functools import partial

API_KEY = "cmd_load_bench_key_00000000000"
AGENT_TOKEN = "agt_load_bench_token_000000000"
WORKSPACE = "ws_load"
_HZ = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the server process ------------------------------------------------------------------------


def run_server(port: int) -> None:
    import trio
    from quart import websocket

    from tether import wire
    from tether.engine import Engine, EngineConfig
    from tether.http import HttpSettings, KeyStore, create_app, serve, server_config

    keys = KeyStore()
    keys.add_key("api", API_KEY, WORKSPACE)
    keys.add_key("agent", AGENT_TOKEN, WORKSPACE)
    config = EngineConfig(heartbeat_timeout=600, grace_period=600)
    bare_count = 0
    welcome = wire.encode(wire.Welcome(
        session_id="sess_bare", resume_token="rt_bare", heartbeat_interval=5,
        heartbeat_timeout=600, grace_period=600)).decode()

    async def main() -> None:
        async with Engine(config) as engine:
            settings = HttpSettings()
            app = create_app(engine, keys, settings)

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
                now = trio.current_time()
                versions = 0
                offset = 0
                while True:
                    page = engine.list_sessions(WORKSPACE, limit=100, offset=offset)
                    for s in page.data:
                        versions += engine.get_session(WORKSPACE, s.session_id).version
                    offset += len(page.data)
                    if not page.meta.has_more:
                        break
                return {"t": now, "tether": versions, "bare": bare_count,
                        "sessions": offset}

            server = server_config("127.0.0.1", port, settings)
            server.backlog = 4096
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(serve, app, server,
                                            shutdown_trigger=trio.sleep_forever))
                print("ready", flush=True)

    trio.run(main)


# -- the agents process ------------------------------------------------------------------------


def ws_frame(text: str) -> bytes:
    """A client text frame (FIN, masked with a zero key, so the payload goes as it is)."""
    payload = text.encode()
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2)
    return head + b"\0\0\0\0" + payload


def run_agents(port: int, agents: int, every: float) -> None:
    """The agents: a minimal WebSocket client on trio sockets, so the client's own cost per
    message (pre-built frames, written 16 to a send) stays well below the server's."""
    import base64
    import random

    import trio

    from tether import wire

    rng = random.Random(1)
    frames = [ws_frame(wire.encode(wire.Heartbeat(telemetry=wire.Telemetry(
        cpu_percent=round(rng.uniform(0, 100), 1), memory_percent=round(rng.uniform(0, 100), 1),
        disk_percent=round(rng.uniform(0, 100), 1), network_rx_bytes=k * 1000,
        network_tx_bytes=k * 400, uptime_seconds=k))).decode()) for k in range(64)]
    batches = [b"".join(frames[(k + j) & 63] for j in range(16)) for k in range(64)]
    state = {"mode": "steady", "sent": 0, "connected": 0, "bare": 0, "errors": 0}
    flood = trio.Event()
    to_bare = trio.Event()
    bare_go = trio.Event()
    quit_ = trio.Event()
    limit = trio.Semaphore(64)

    async def connect(path: str, i: int) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # a small send buffer: what the server has not taken stays here, not in the kernel
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        key = base64.b64encode(i.to_bytes(16)).decode()
        await stream.send_all((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {AGENT_TOKEN}\r\n\r\n"
        ).encode())
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

    async def flood_loop(stream: trio.SocketStream, i: int, until: trio.Event) -> None:
        k = i
        while not until.is_set():
            await stream.send_all(batches[k & 63])
            k += 1
            state["sent"] += 16

    async def agent(i: int) -> None:
        try:
            async with limit:
                stream = await connect("/v1/agent", i)
            state["connected"] += 1
            phase = trio.current_time() + (i % 1000) * every / 1000
            with trio.CancelScope() as scope:
                steady_scopes.append(scope)
                if flood.is_set():
                    scope.cancel()
                while True:
                    await trio.sleep_until(phase)
                    await stream.send_all(frames[i & 63])
                    state["sent"] += 1
                    phase += every
            await flood_loop(stream, i, to_bare)
            # a reset, not a close: what the server has not read yet is dropped, not drained,
            # so the next phase does not share the server with this one's backlog
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
            async with limit:
                stream = await connect("/bare", i)
            state["bare"] += 1
            await bare_go.wait()
            await flood_loop(stream, i, quit_)
            await stream.aclose()
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
                if cmd == "flood":
                    flood.set()
                    for scope in steady_scopes:
                        scope.cancel()
                elif cmd == "bare":
                    to_bare.set()
                elif cmd == "go":
                    bare_go.set()
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
                await trio.sleep(1)
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()

    trio.run(main)


# -- the orchestrator --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


class Agents:
    """The agents process: commands on its stdin, its state (JSON lines) on its stdout."""

    def __init__(self, port: int, agents: int, every: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "agents", "--port", str(port), "--agents",
             str(agents), "--every", str(every)],
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


def main(args: argparse.Namespace) -> dict[str, float | int]:
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--role", "server", "--port", str(port)],
                              stdout=subprocess.PIPE, text=True)
    agents: Agents | None = None
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the server did not start")
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"},
                              timeout=60)

        def stats() -> dict[str, float]:
            return client.get("/bench/stats").json()  # type: ignore[no-any-return]

        time.sleep(1)
        rss_before = rss_kb(server.pid)
        say(f"[server] pid {server.pid} on {base}, RSS {rss_before / 1024:.1f} MB")
        started = time.monotonic()
        agents = Agents(port, args.agents, args.every)
        agents.wait_for("connected", args.agents, timeout=300)
        say(f"[connect] {args.agents:,} agents in {time.monotonic() - started:.1f} s")
        agents.drain(3)
        rss_after = rss_kb(server.pid)
        per_agent = (rss_after - rss_before) / args.agents
        say(f"[rss] {rss_before / 1024:.1f} MB -> {rss_after / 1024:.1f} MB: "
            f"{per_agent:.1f} KB per agent")

        # steady: heartbeats every `every` s, list polled back to back
        s0, c0 = stats(), cpu_s(server.pid)
        latencies = []
        end = time.monotonic() + args.steady
        while time.monotonic() < end:
            t = time.perf_counter()
            r = client.get("/v1/sessions", params={"status": "CONNECTED", "limit": 20})
            latencies.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json()["meta"]["total"] == args.agents, r.text
        s1, c1 = stats(), cpu_s(server.pid)
        steady_rate = (s1["tether"] - s0["tether"]) / (s1["t"] - s0["t"])
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        say(f"[steady] {len(latencies)} lists: p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
            f"heartbeats ingested {steady_rate:.0f}/s; server CPU "
            f"{(c1 - c0) / (s1['t'] - s0['t']):.0%}")

        def window(key: str) -> tuple[float, float, float]:
            agents.drain(args.warmup)
            a, ca = stats(), cpu_s(server.pid)
            agents.drain(args.window)
            b, cb = stats(), cpu_s(server.pid)
            span = b["t"] - a["t"]
            return (b[key] - a[key]) / span, (cb - ca) / span

        agents.tell("flood")
        ingest, ingest_cpu = window("tether")
        say(f"[saturation] Tether ingest {ingest:,.0f} msgs/s (server CPU {ingest_cpu:.0%})")
        agents.tell("bare")
        agents.wait_for("bare", args.agents, timeout=300)
        agents.tell("go")
        bare, bare_cpu = window("bare")
        say(f"[saturation] bare route {bare:,.0f} msgs/s (server CPU {bare_cpu:.0%})")
        agents.tell("quit")
        agents.proc.wait(timeout=60)
        client.close()
        return {
            "agents": args.agents,
            "ingest_msgs_per_s": round(ingest, 1),
            "bare_ws_msgs_per_s": round(bare, 1),
            "ingest_vs_bare": round(ingest / bare, 3) if bare else 0.0,
            "list_p50_ms": round(p50, 2),
            "list_p99_ms": round(p99, 2),
            "server_rss_per_agent_kb": round(per_agent, 1),
            "steady_heartbeats_per_s": round(steady_rate, 1),
            "lists_polled": len(latencies),
            "server_cpu_ingest": round(ingest_cpu, 2),
            "server_cpu_bare": round(bare_cpu, 2),
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
    parser.add_argument("--window", type=float, default=10.0, help="seconds per saturation window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    args = parser.parse_args()
    if args.role == "server":
        run_server(args.port)
    elif args.role == "agents":
        run_agents(args.port, args.agents, args.every)
    else:
        result = main(args)
        result["targets_met"] = bool(
            result["ingest_vs_bare"] >= 0.8 and result["list_p99_ms"] <= 50
            and result["server_rss_per_agent_kb"] <= 64
        )
        print(json.dumps(result))
