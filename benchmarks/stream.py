"""Stream benchmark: a session's live output, from its agent to attached observers, against a
bare WebSocket relay on the same server and the same clients.

Three processes: this one (the clients and the orchestration), a server (``--role server``:
the project's app on Hypercorn's trio worker, tuned as ``tether serve`` tunes its collector,
plus a bare relay on the same app), and, last, a memory process (``--role memory``: an engine
with no server). The server is a process of its own so that on 2 cores the clients, which
decode every frame each observer gets, have the other core and do not share its loop
(load.py does the same for its agents).

The bare relay is two Quart-Trio WebSocket routes on the same app, so the stack under it
(Hypercorn, wsproto, Quart's websocket, trio) is Tether's and the ratio isolates Tether's own
work. ``/bare/agent/<key>`` decodes each agent frame with ``tether.wire``'s decoder and, for
an ``output``, encodes one attach ``output`` frame and puts it in every observer's channel;
``/bare/observe/<key>`` sends ``attached`` once, then drains its channel into its socket.
A channel and a sender task per observer is the least a relay needs so that one slow observer
does not stall the rest, and it is the shape of Tether's attach stream: what the relay leaves
out is Tether's bookkeeping (offsets and the session's buffer and budget, the per-stream
byte accounting and slow-consumer cut-off, each stream's own frame, the client record).

The agent socket's frame rate limit (``agent_frame_rate``, 100/s by default) is set far above
anything sent here (1,000,000/s, burst 1,000,000): its code runs on every frame and never
throttles, so the figures are the server's, not the throttle's (as in load.py).

Phases:
1. fanout: one agent (cluster.py's minimal agent socket) writes output in ``--chunk``
   (16 KiB) frames as fast as the server takes them, to a Tether session with 1 and then
   ``--observers`` (100) observers attached (``mode=observer``), and in the same way to the
   bare relay with as many observers, each observer connected to both. Rounds alternate,
   Tether then bare, ``--rounds`` (3) of each per observer count, ``--seconds`` (3) of writing
   each. The agent keeps at most ``--window`` (512 KiB) ahead of the slowest observer (the
   clients are one process, so it knows): the server is kept saturated, but no stream queue
   reaches Tether's 1 MiB ``stream_queue_bytes`` and is cut off (4008), which would end the
   measurement, not measure it. A round's rate, per observer, is the bytes of output each
   observer got (all get all) over the time from the round's first frame sent to the last
   observer's last frame received; every observer checks that each frame starts where the
   last ended. ``fanout_bytes_per_s`` / ``bare_fanout_bytes_per_s`` are medians at
   ``--observers``, ``fanout_1_*`` at one observer.
2. latency: ``--sessions`` (1,000) agents, each with one observer, each writing
   ``--latency-bytes`` (256) every ``--latency-every`` (0.25 s; 1 KiB/s) at staggered phases,
   for ``--latency-seconds`` (20) after a 2 s warm-up. Each piece starts with the trio time
   it was sent; agents and observers share this process's clock, so an observer's latency is
   its receipt time minus that (agent frame sent -> observer frame received, both clients'
   own scheduling in it). Then the same on the bare relay (``bare_latency_*``, for comparison).
3. memory (its own process): an engine (no server) with ``--memory-sessions`` (10,000)
   sessions (``NullTransport``), each written ``--output-buffer-bytes`` (1 MiB, a full
   buffer) of output in ``--chunk`` pieces, round-robin over the sessions, under the budget
   ``--output-memory-bytes`` (1 GiB, the engine's default). ``rss_growth_mb``: RSS after the
   writes minus RSS after the sessions were made, both after ``gc.collect()``; also the
   bytes retained (through the public ``read_output``) and the peak (VmHWM).

Run::

    .venv/bin/python benchmarks/stream.py                  # the issue's sizes, ~2 minutes
    .venv/bin/python benchmarks/stream.py --observers 10 --sessions 100 --latency-seconds 5 \\
        --memory-sessions 1000 --rounds 1                 # a smoke run
    .venv/bin/python benchmarks/stream.py --output-memory-bytes 268435456   # a 256 MiB budget

Last line: one JSON object. Targets: ``fanout_vs_bare >= 0.7``, ``latency_p99_ms <= 50``,
``rss_growth_mb <= 1.25 x`` the budget in MB (``rss_target_mb``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, benchmarks/ comes first on sys.path and its http.py would shadow the
# standard library's ``http``: drop it (load.py and cluster.py are imported by path below).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import subprocess
import time
from typing import TYPE_CHECKING, Any

import trio

from tether import attach, wire

if TYPE_CHECKING:
    from types import ModuleType

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024
HANDSHAKES = 64  # WebSocket handshakes at once, as load.py
WARM_UP = 2.0  # seconds of the latency phase left out of its figures


def _load(name: str, filename: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# load.py: upgrade_request, ws_frame (a client text frame), cpu_s and proc_status_kb (/proc);
# cluster.py: AgentConn (a minimal agent socket), hello, and redis_store.py's keys (as ``rs``)
load = _load("load_bench", "load.py")
cluster = _load("cluster_bench", "cluster.py")
API_KEY = cluster.rs.API_KEY
AGENT_TOKEN = cluster.rs.AGENT_TOKEN
WORKSPACE = cluster.rs.WORKSPACE
say = load.say


def text_of(size: int) -> str:
    """``size`` bytes of terminal-like output: numbered ASCII lines of 80 bytes."""
    line = " the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTUVW\n"
    text = "".join(f"{k:06d}{line[6:]}" for k in range(size // len(line) + 1))[:size]
    assert len(text.encode()) == size
    return text


# -- the server process ------------------------------------------------------------------------


def run_server(port: int, gc_young: int, profile: str | None) -> None:
    import signal
    from functools import partial

    from quart import websocket

    from tether.engine import Engine, EngineConfig
    from tether.http import HttpSettings, KeyStore, create_app, serve, server_config, tune_gc

    keys = KeyStore()
    keys.add_key("api", API_KEY, WORKSPACE)
    keys.add_key("agent", AGENT_TOKEN, WORKSPACE)
    hour = 3600.0
    config = EngineConfig(heartbeat_timeout=hour, pending_timeout=hour, grace_period=hour)
    # high enough never to throttle (see the module docstring), yet still on the path
    settings = HttpSettings(agent_frame_rate=1_000_000.0, agent_frame_burst=1_000_000)
    relays: dict[str, set[trio.MemorySendChannel[str]]] = {}

    async def main() -> None:
        async with Engine(config) as engine:
            app = create_app(engine, keys, settings)

            @app.websocket("/bare/agent/<key>")
            async def bare_agent(key: str) -> None:
                decode, encode, output = wire.decode_agent_frame, attach.encode, wire.Output
                observers = relays.setdefault(key, set())
                await websocket.accept()
                while True:
                    frame = decode(await websocket.receive())
                    if type(frame) is output:
                        text = encode(attach.Output(offset=frame.offset, data=frame.data,
                                                    stream=frame.stream,
                                                    command_id=frame.command_id)).decode()
                        for channel in observers:
                            channel.send_nowait(text)

            @app.websocket("/bare/observe/<key>")
            async def bare_observe(key: str) -> None:
                send, receive = trio.open_memory_channel[str](math.inf)
                await websocket.accept()
                await websocket.send(attach.encode(attach.Attached(
                    client_id="bare", mode="observer", offset=0, first_offset=0,
                    status="CONNECTED")).decode())
                observers = relays.setdefault(key, set())
                observers.add(send)
                try:
                    async for text in receive:
                        await websocket.send(text)
                finally:
                    observers.discard(send)

            server = server_config("127.0.0.1", port, settings)
            server.backlog = 4096
            tune_gc(gc_young)  # as ``tether serve`` does
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    await nursery.start(partial(serve, app, server,
                                                shutdown_trigger=trio.sleep_forever))
                    print("ready", flush=True)
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()
            engine.shutdown()

    if profile is None:
        trio.run(main)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        trio.run(main)
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# -- the clients -------------------------------------------------------------------------------


class Conn(cluster.AgentConn):  # type: ignore[misc,name-defined]
    """cluster.py's minimal client socket, opened on any path with any token, its server
    frames read as raw payloads (an observer decodes them as attach frames)."""

    @classmethod
    async def connect(cls, port: int, path: str, token: str) -> Conn:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = cls(stream)
        try:
            await conn.send(load.upgrade_request(path, port, os.urandom(16), token))
            while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
                await conn._fill()
            status = bytes(conn.buffer[:end]).split(b"\r\n")[0]
            del conn.buffer[:end + 4]
            if not status.startswith(b"HTTP/1.1 101"):
                raise cluster.Closed(f"{path}: {status.decode()}")
            return conn
        except BaseException:
            await conn.close()
            raise

    async def payload(self) -> bytes:
        """The next text frame's payload; :class:`Closed` with the close code if it closes."""
        while True:
            head = await self._take(2)
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n >= 126:
                n = int.from_bytes(await self._take(2 if n == 126 else 8), "big")
            payload: bytes = await self._take(n)
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                raise cluster.Closed(f"close {code} {payload[2:].decode(errors='replace')}")
            if opcode in (0x1, 0x2):
                return payload


class Observer:
    """An attach stream's client: checks that every output frame starts where the last ended,
    and tells who waits for it when it has received up to an offset."""

    def __init__(self, conn: Conn, offset: int) -> None:
        self.conn = conn
        self.received = offset  # the offset the next output frame must start at
        self.at = 0.0  # when the last output frame came
        self.want = math.inf
        self.reached = trio.Event()
        self.latencies: list[float] | None = None  # for the latency phase

    async def until(self, offset: int) -> None:
        if self.received < offset:
            self.want = offset
            self.reached = trio.Event()
            await self.reached.wait()

    async def run(self) -> None:
        decode, output, now = attach.decode_server_frame, attach.Output, trio.current_time
        while True:
            frame = decode(await self.conn.payload())
            if type(frame) is not output:
                raise RuntimeError(f"observer: {frame}")
            if frame.offset != self.received:
                raise RuntimeError(f"observer: output at {frame.offset}, {self.received} "
                                   "expected")
            self.received += len(frame.data)  # ASCII: characters are bytes
            self.at = t = now()
            if self.latencies is not None:
                self.latencies.append(t - float(frame.data[:frame.data.index(" ")]))
            if self.received >= self.want:
                self.want = math.inf
                self.reached.set()


def attach_path(session_id: str, i: int, offset: int) -> str:
    return (f"/v1/sessions/{session_id}/attach?mode=observer&user_email=observer{i}@bench.test"
            f"&offset={offset}")


async def open_observer(port: int, path: str, token: str, offset: int) -> Observer:
    """An observer on ``path``, whose output starts at ``offset`` (the bare relay's
    ``attached`` says 0: it keeps no offsets)."""
    conn = await Conn.connect(port, path, token)
    first = attach.decode_server_frame(await conn.payload())
    if not isinstance(first, attach.Attached) or (token and first.offset != offset):
        raise RuntimeError(f"{path}: {first} instead of attached at {offset}")
    return Observer(conn, offset)


class Writer:
    """An agent's side of one output stream: its socket and the next offset."""

    def __init__(self, conn: Any, offset: int = 0) -> None:
        self.conn = conn
        self.offset = offset

    async def write(self, text: str) -> None:
        await self.conn.send(load.ws_frame(wire.encode(wire.Output(
            offset=self.offset, data=text)).decode()))
        self.offset += len(text)

    async def watch(self) -> None:
        """Nothing should come back to the agent (an ``output_gap`` would): fail if it does."""
        frame = await self.conn.receive()
        raise RuntimeError(f"the server told the agent: {frame}")


async def open_writer(port: int, kind: str, key: str) -> tuple[Writer, str]:
    """An agent on Tether (its session id) or on the bare relay under ``key``."""
    if kind == "tether":
        conn, welcome = await cluster.AgentConn.open(port, cluster.hello(f"stream-{key}"))
        if not isinstance(welcome, wire.Welcome):
            raise RuntimeError(f"agent {key}: {welcome}")
        return Writer(conn, welcome.output_offset), welcome.session_id
    return Writer(await Conn.connect(port, f"/bare/agent/{key}", AGENT_TOKEN)), key


def observer_path(kind: str, key: str, i: int, offset: int) -> tuple[str, str]:
    if kind == "tether":
        return attach_path(key, i, offset), API_KEY
    return f"/bare/observe/{key}", ""


class Fanout:
    """One agent and its observers on Tether or on the bare relay."""

    def __init__(self, kind: str, writer: Writer, key: str) -> None:
        self.kind = kind
        self.writer = writer
        self.key = key
        self.observers: list[Observer] = []

    async def add_observers(self, port: int, count: int, nursery: trio.Nursery) -> None:
        while len(self.observers) < count:
            i = len(self.observers)
            path, token = observer_path(self.kind, self.key, i, self.writer.offset)
            observer = await open_observer(port, path, token, self.writer.offset)
            self.observers.append(observer)
            nursery.start_soon(observer.run)

    async def round(self, text: str, seconds: float, window: int) -> tuple[float, int]:
        """Write for ``seconds``, at most ``window`` bytes ahead of the slowest observer, and
        wait for every observer to have it all: bytes per second per observer, and bytes."""
        writer, observers, chunk = self.writer, self.observers, len(text)
        start = writer.offset
        t0 = trio.current_time()
        stop = t0 + seconds
        while trio.current_time() < stop:
            need = writer.offset + chunk - window
            for observer in observers:
                if observer.received < need:
                    await observer.until(need)
            await writer.write(text)
        with trio.fail_after(60):
            for observer in observers:
                await observer.until(writer.offset)
        span = max(o.at for o in observers) - t0
        return (writer.offset - start) / span, writer.offset - start


def cpu_seconds(server_pid: int) -> tuple[float, float]:
    return load.cpu_s(server_pid), load.cpu_s(os.getpid())


async def fanout_phase(port: int, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    text = text_of(args.chunk)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        fans: dict[str, Fanout] = {}
        for kind in ("tether", "bare"):
            writer, key = await open_writer(port, kind, "fan")
            fans[kind] = Fanout(kind, writer, key)
            nursery.start_soon(writer.watch)
        for count in sorted({1, args.observers}):
            started = time.monotonic()
            for fan in fans.values():
                await fan.add_observers(port, count, nursery)
            say(f"[fanout] {count} observer(s) on each in {time.monotonic() - started:.1f} s")
            rates: dict[str, list[float]] = {"tether": [], "bare": []}
            cpus: dict[str, list[tuple[float, float]]] = {"tether": [], "bare": []}
            for r in range(2 * args.rounds):
                kind = ("tether", "bare")[r % 2]
                s0, c0 = cpu_seconds(server_pid)
                t0 = time.monotonic()
                rate, sent = await fans[kind].round(text, args.seconds, args.window)
                span = time.monotonic() - t0
                s1, c1 = cpu_seconds(server_pid)
                rates[kind].append(rate)
                cpus[kind].append(((s1 - s0) / span, (c1 - c0) / span))
                say(f"[fanout {count}: {r + 1}/{2 * args.rounds}] {kind:6s} {sent / MIB:7.1f} MiB"
                    f" to each of {count}: {rate / MIB:7.2f} MiB/s per observer "
                    f"({rate * count / MIB:7.1f} MiB/s out); server CPU {cpus[kind][-1][0]:.0%}, "
                    f"clients {cpus[kind][-1][1]:.0%}")
            tether, bare = statistics.median(rates["tether"]), statistics.median(rates["bare"])
            name = "fanout" if count == args.observers else "fanout_1"
            if count == 1 and args.observers == 1:
                name = "fanout"
            out[f"{name}_bytes_per_s"] = round(tether)
            out[f"bare_{name}_bytes_per_s"] = round(bare)
            out[f"{name}_vs_bare"] = round(tether / bare, 3)
            out[f"{name}_rounds"] = [round(x) for x in rates["tether"]]
            out[f"bare_{name}_rounds"] = [round(x) for x in rates["bare"]]
            out[f"{name}_server_cpu"] = round(statistics.median(c[0] for c in cpus["tether"]), 2)
            out[f"bare_{name}_server_cpu"] = round(
                statistics.median(c[0] for c in cpus["bare"]), 2)
            out[f"{name}_client_cpu"] = round(statistics.median(c[1] for c in cpus["tether"]), 2)
            say(f"[fanout {count}] Tether {tether / MIB:.2f} MiB/s per observer, bare "
                f"{bare / MIB:.2f} MiB/s: {tether / bare:.3f}")
        nursery.cancel_scope.cancel()
    for fan in fans.values():
        await fan.writer.conn.close()
        for observer in fan.observers:
            await observer.conn.close()
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def latency_phase(port: int, server_pid: int, kind: str,
                        args: argparse.Namespace) -> dict[str, Any]:
    n = args.sessions
    writers: list[Writer] = []
    observers: list[Observer] = []
    gate = trio.Semaphore(HANDSHAKES)
    padding = text_of(args.latency_bytes)

    async def connect(i: int) -> None:
        async with gate:
            writer, key = await open_writer(port, kind, f"lat{i}")
            path, token = observer_path(kind, key, i, writer.offset)
            observer = await open_observer(port, path, token, writer.offset)
        writers.append(writer)
        observers.append(observer)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(connect, i)
    say(f"[latency {kind}] {n:,} agents and {n:,} observers connected in "
        f"{time.monotonic() - started:.1f} s")

    async def agent(i: int, writer: Writer, t0: float) -> None:
        due = t0 + i * args.latency_every / n
        while True:
            await trio.sleep_until(due)
            stamp = f"{trio.current_time():.6f} "
            await writer.write(stamp + padding[len(stamp):])
            due += args.latency_every

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for observer in observers:
            nursery.start_soon(observer.run)
        for writer in writers:
            nursery.start_soon(writer.watch)
        t0 = trio.current_time() + 0.1
        for i, writer in enumerate(writers):
            nursery.start_soon(agent, i, writer, t0)
        await trio.sleep_until(t0 + WARM_UP)
        for observer in observers:
            observer.latencies = latencies
        s0, c0 = cpu_seconds(server_pid)
        await trio.sleep(args.latency_seconds)
        s1, c1 = cpu_seconds(server_pid)
        for observer in observers:
            observer.latencies = None
        nursery.cancel_scope.cancel()
    for writer in writers:
        await writer.conn.close()
    for observer in observers:
        await observer.conn.close()
    ms = [x * 1000 for x in latencies]
    expected = n * args.latency_seconds / args.latency_every
    p50, p99, top = statistics.median(ms), percentile(ms, 0.99), max(ms)
    say(f"[latency {kind}] {len(ms):,} frames (~{expected:,.0f} expected) in "
        f"{args.latency_seconds:.0f} s: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {top:.1f} ms;"
        f" server CPU {(s1 - s0) / args.latency_seconds:.0%}, clients "
        f"{(c1 - c0) / args.latency_seconds:.0%}")
    prefix = "" if kind == "tether" else "bare_"
    return {f"{prefix}latency_p50_ms": round(p50, 2), f"{prefix}latency_p99_ms": round(p99, 2),
            f"{prefix}latency_max_ms": round(top, 1), f"{prefix}latency_frames": len(ms),
            f"{prefix}latency_server_cpu": round((s1 - s0) / args.latency_seconds, 2)}


async def clients(port: int, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "fanout" in args.phases:
        out.update(await fanout_phase(port, server_pid, args))
        await trio.sleep(1)
    if "latency" in args.phases:
        for kind in ("tether", "bare"):
            out.update(await latency_phase(port, server_pid, kind, args))
            await trio.sleep(1)
    out["server_rss_peak_mb"] = round(load.proc_status_kb(server_pid, "VmHWM") / 1024, 1)
    return out


# -- the memory process ------------------------------------------------------------------------


def rss_kb() -> int:
    gc.collect()
    return int(load.proc_status_kb(os.getpid(), "VmRSS"))


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    from tether.engine import Engine, EngineConfig
    from tether.engine.testing import NullTransport

    day = 24 * 3600.0
    budget = args.output_memory_bytes
    config = EngineConfig(heartbeat_timeout=day, pending_timeout=day, grace_period=day,
                          output_buffer_bytes=args.output_buffer_bytes,
                          output_memory_bytes=budget)
    n = args.memory_sessions
    text = text_of(args.chunk)
    pieces = -(-args.output_buffer_bytes // args.chunk)
    transport = NullTransport()
    async with Engine(config) as engine:
        before = rss_kb()
        links = []
        for i in range(n):
            links.append(await engine.agent_hello(
                WORKSPACE, transport, machine_id=f"mem-{i:06d}", machine_hostname="mem-host"))
            if i % 1000 == 999:
                await trio.sleep(0)
        sessions = rss_kb()
        say(f"[memory] {n:,} sessions: RSS {before / 1024:.1f} -> {sessions / 1024:.1f} MB")
        ceiling = sessions + 4 * budget // 1024 + 512 * 1024  # kB: stop before it runs away
        started = time.perf_counter()
        writes = 0
        stopped = False
        for piece in range(pieces):
            offset = piece * len(text)
            for link in links:
                link.output(offset, text)
                writes += 1
                if writes % 1000 == 0:
                    await trio.sleep(0)
            rss = load.proc_status_kb(os.getpid(), "VmRSS")
            if piece % 8 == 7 or piece == pieces - 1:
                say(f"[memory] {(piece + 1) * len(text) / MIB:.2f} MiB written per session "
                    f"({(piece + 1) * len(text) * n / MIB:,.0f} MiB in all): RSS "
                    f"{rss / 1024:,.0f} MB")
            if rss > ceiling:
                say("[memory] RSS past 4x the budget + 512 MB: stopped")
                stopped = True
                break
        took = time.perf_counter() - started
        after = rss_kb()
        peak = load.proc_status_kb(os.getpid(), "VmHWM")
        retained = 0
        for link in links:
            page = await engine.read_output(WORKSPACE, link.session_id, limit=1)
            retained += page.total_bytes - page.first_offset
        engine.shutdown()
    growth = (after - sessions) / 1024
    say(f"[memory] {writes:,} writes of {len(text):,} bytes in {took:.1f} s "
        f"({writes / took:,.0f}/s); retained {retained / MIB:,.1f} MiB (budget "
        f"{budget / MIB:,.0f} MiB); RSS {sessions / 1024:,.1f} -> {after / 1024:,.1f} MB: growth "
        f"{growth:,.1f} MB (peak {peak / 1024:,.1f} MB)")
    return {
        "memory_sessions": n,
        "rss_growth_mb": round(growth, 1),
        "rss_peak_growth_mb": round((peak - sessions) / 1024, 1),
        "output_memory_mb": round(budget / MIB, 1),
        "rss_target_mb": round(1.25 * budget / MIB, 1),
        "retained_mb": round(retained / MIB, 1),
        "written_mb": round(writes * len(text) / MIB, 1),
        "output_writes_per_s": round(writes / took),
        "sessions_rss_mb": round((sessions - before) / 1024, 1),
        "memory_stopped_early": stopped,
    }


# -- the orchestrator --------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"chunk": args.chunk, "observers": args.observers,
                           "sessions": args.sessions}
    if {"fanout", "latency"} & set(args.phases):
        port = load.free_port()
        command = [sys.executable, __file__, "--role", "server", "--port", str(port),
                   "--gc-young", str(args.gc_young)]
        if args.profile_server:
            command += ["--profile-server", args.profile_server]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise SystemExit("the server did not start")
            say(f"[server] pid {server.pid} on 127.0.0.1:{port}")
            out.update(trio.run(clients, port, server.pid, args))
        finally:
            server.terminate()
            server.wait(timeout=60)
    if "memory" in args.phases:
        result = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--role", "memory"],
            stdout=subprocess.PIPE, text=True, check=True)
        out.update(json.loads(result.stdout.strip().splitlines()[-1]))
    met = []
    if "fanout_vs_bare" in out:
        met.append(out["fanout_vs_bare"] >= 0.7)
    if "latency_p99_ms" in out:
        met.append(out["latency_p99_ms"] <= 50)
    if "rss_growth_mb" in out:
        met.append(out["rss_growth_mb"] <= out["rss_target_mb"]
                   and not out["memory_stopped_early"])
    out["targets_met"] = all(met)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["main", "server", "memory"], default="main")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--phases", default="fanout,latency,memory",
                        help="comma-separated: fanout, latency, memory")
    parser.add_argument("--chunk", type=int, default=16 * 1024,
                        help="bytes of output per agent frame (fanout and memory)")
    parser.add_argument("--observers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="fanout rounds of each kind")
    parser.add_argument("--seconds", type=float, default=3.0, help="writing per fanout round")
    parser.add_argument("--window", type=int, default=512 * 1024,
                        help="bytes the agent may be ahead of its slowest observer")
    parser.add_argument("--sessions", type=int, default=1000, help="latency: sessions")
    parser.add_argument("--latency-bytes", type=int, default=256)
    parser.add_argument("--latency-every", type=float, default=0.25)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--memory-sessions", type=int, default=10_000)
    parser.add_argument("--output-buffer-bytes", type=int, default=MIB,
                        help="each session's buffer, and what is written to each")
    parser.add_argument("--output-memory-bytes", type=int, default=1024 * MIB,
                        help="the engine's budget over all output buffers")
    parser.add_argument("--gc-young", type=int, default=None,
                        help="the server's young-generation GC threshold, as tether serve's")
    parser.add_argument("--profile-server", default=None, metavar="PATH",
                        help="run the server under cProfile and dump its stats to PATH")
    args = parser.parse_args()
    args.phases = [p for p in args.phases.split(",") if p]
    if args.gc_young is None:
        from tether.http import DEFAULT_GC_YOUNG

        args.gc_young = DEFAULT_GC_YOUNG
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "server":
        run_server(arguments.port, arguments.gc_young, arguments.profile_server)
    elif arguments.role == "memory":
        print(json.dumps(trio.run(memory, arguments)))
    else:
        print(json.dumps(main(arguments)))
