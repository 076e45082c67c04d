"""Webhook delivery benchmark: 10,000 sessions churning, one healthy receiver, one dead one.

    python benchmarks/webhooks.py [--sessions 10000] [--rss-events 100000]

Phase 1 churns ``--sessions`` sessions through their lifecycle (created, connected, client
attached, client detached, disconnected: 5 events each) in one workspace with two endpoints
subscribed to ``*``: a healthy receiver (a separate process on 127.0.0.1, so its CPU is not
ours) and a dead one (a port where nothing listens). It waits until the healthy receiver has
every event, and reports ``events_per_s`` (emission while churning), ``deliveries_per_s``
(healthy deliveries / time from the first event to the last delivery) and
``delivered_ratio`` (distinct events the healthy receiver got / events emitted).

Phase 2 emits ``--rss-events`` more events with the dead endpoint never disabled, so its
queue fills and overflows into failed deliveries, and reports the RSS growth over them. The
engine keeps a small event log and purges ended sessions at once here, so what grows is what
the webhooks keep. Last line: one JSON object.
"""

from __future__ import annotations

import sys

# Run as a script, this folder comes first on sys.path, and its http.py (the HTTP benchmark)
# would shadow the standard library's http for httpx and hypercorn.
if sys.path and sys.path[0] == __file__.rpartition("/")[0]:
    del sys.path[0]

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import time

import httpx
import trio

from tether.engine import Engine, EngineConfig
from tether.engine.testing import NullTransport
from tether.webhooks import WebhookConfig, Webhooks

WS = "ws_bench"


# -- the healthy receiver: a separate asyncio process that counts distinct webhook-ids ------

class _Receiver(asyncio.Protocol):
    seen: set[str] = set()
    requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            fields = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
            length = int(fields.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if head[0].startswith("GET /stats"):
                body = json.dumps({"requests": _Receiver.requests,
                                   "distinct": len(_Receiver.seen)}).encode()
            else:
                _Receiver.requests += 1
                _Receiver.seen.add(fields.get("webhook-id", ""))
                body = b""
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def run_receiver(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Receiver, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def churn(engine: Engine, machine: str) -> None:
    detail = await engine.create_session(WS, machine, machine)
    await engine.agent_hello(WS, NullTransport(), machine_id=machine, machine_hostname=machine)
    client = await engine.attach_client(WS, detail.session_id, "[email protected]", "operator")
    await engine.detach_client(WS, detail.session_id, client.client_id)
    await engine.terminate(WS, detail.session_id)


async def churn_many(engine: Engine, start: int, count: int, parallel: int = 200) -> None:
    limiter = trio.CapacityLimiter(parallel)

    async def one(i: int) -> None:
        async with limiter:
            await churn(engine, f"mach_{i}")

    async with trio.open_nursery() as nursery:
        for i in range(start, start + count):
            nursery.start_soon(one, i)


async def receiver_stats(port: int) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/stats")).json()  # type: ignore[no-any-return]


async def bench(sessions: int, rss_events: int, port: int, dead_endpoint: bool = True
                ) -> dict[str, float]:
    engine_config = EngineConfig(retention=0.0, event_log_max=20_000)
    hook_config = WebhookConfig(allow_private=True, max_consecutive_failures=0, retry_base=5.0)
    async with Engine(engine_config) as engine, trio.open_nursery() as nursery:
        hooks = Webhooks(engine, hook_config)
        await nursery.start(hooks.run)
        healthy = await hooks.create(WS, f"http://127.0.0.1:{port}/hook", ["*"])
        dead_url = f"http://127.0.0.1:{free_port()}/hook"
        dead = await hooks.create(WS, dead_url, ["*"], enabled=dead_endpoint)
        gc.freeze()
        rss_start = rss_mb()

        # Phase 1: throughput to the healthy receiver while the dead one fails.
        first_offset = engine.events.next_offset
        start = trio.current_time()
        await churn_many(engine, 0, sessions)
        churned = trio.current_time()
        emitted = engine.events.next_offset - first_offset
        while True:  # until every event is settled (delivered, or failed on overflow)
            done = hooks.endpoint_stats(WS, healthy.id)
            if not done["pending"] and done["succeeded"] + done["failed"] >= emitted:
                break
            await trio.sleep(0.01)
        delivered_at = trio.current_time()
        stats = await receiver_stats(port)
        healthy_stats = hooks.endpoint_stats(WS, healthy.id)

        # Phase 2: memory with the dead endpoint over rss_events more events.
        gc.collect()
        rss_before = rss_mb()
        dead_before = hooks.endpoint_stats(WS, dead.id)
        phase2_sessions = rss_events // 5
        for batch_start in range(sessions, sessions + phase2_sessions, 1000):
            # Paced by the healthy receiver, so only the dead endpoint's queue overflows.
            while hooks.endpoint_stats(WS, healthy.id)["pending"] > 10_000:
                await trio.sleep(0.05)
            count = min(1000, sessions + phase2_sessions - batch_start)
            await churn_many(engine, batch_start, count)
        while hooks.endpoint_stats(WS, healthy.id)["pending"]:
            await trio.sleep(0.05)
        gc.collect()
        rss_after = rss_mb()
        dead_after = hooks.endpoint_stats(WS, dead.id)
        print(f"phase 1: {sessions} sessions, {emitted} events in {churned - start:.2f} s; "
              f"healthy got them all after {delivered_at - start:.2f} s; receiver {stats}; "
              f"healthy endpoint {healthy_stats}", file=sys.stderr)
        print(f"phase 2: {phase2_sessions * 5} events; dead endpoint before {dead_before}, "
              f"after {dead_after}; RSS {rss_before:.1f} -> {rss_after:.1f} MB",
              file=sys.stderr)
        nursery.cancel_scope.cancel()
    return {
        "sessions": sessions,
        "events": emitted,
        "events_per_s": round(emitted / (churned - start), 1),
        "deliveries_per_s": round(healthy_stats["succeeded"] / (delivered_at - start), 1),
        "delivered_ratio": round(stats["distinct"] / emitted, 6),
        "rss_growth_mb_dead_endpoint": round(rss_after - rss_before, 1),
        "rss_events": phase2_sessions * 5,
        "rss_growth_mb_whole_run": round(rss_after - rss_start, 1),
        "healthy_overflowed": healthy_stats["overflowed"],
        "dead_endpoint_failed": dead_after["failed"],
        "dead_endpoint_overflowed": dead_after["overflowed"],
        "dead_endpoint_pending": dead_after["pending"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rss-events", type=int, default=100_000)
    parser.add_argument("--no-dead", action="store_true",
                        help="leave the dead endpoint disabled (throughput of the healthy alone)")
    parser.add_argument("--receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver is not None:
        run_receiver(args.receiver)
        return
    port = free_port()
    receiver = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        result = trio.run(bench, args.sessions, args.rss_events, port, not args.no_dead)
    finally:
        receiver.terminate()
        receiver.wait()
    result["cpus"] = os.cpu_count() or 0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
