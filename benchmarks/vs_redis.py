"""Tether's engine vs the usual alternative: Redis keys with a TTL refreshed on every heartbeat.

The alternative stores each session as a Redis key, refreshes it with ``SET key telemetry EX
ttl`` on every heartbeat, and notices a dead session through keyspace notifications
(``__keyevent@0__:expired``). Side by side in one run, with 100,000 sessions each:

- heartbeat throughput: ``AgentLink.heartbeat(telemetry)`` over every session (the engine, in
  this process) vs ``SET EX`` of the same telemetry (JSON) pipelined 1,000 per round trip
  (redis-py, the server on 127.0.0.1). Median of the rounds.
- expiry: 10,000 sessions go silent at once while the other 90,000 keep heartbeating every
  second. A silent session is noticed by Tether when ``session.disconnected`` reaches a
  subscriber (its deadline: last heartbeat + heartbeat_timeout + grace_period), by Redis when
  the ``expired`` event reaches a subscriber (its deadline: the SET + ttl, the SET's time taken
  after its pipeline returned, which favours Redis). Lateness = notice - deadline.

Needs Redis (Debian) and the Python client (``pip install -e '.[bench]'``)::

    apt-get update && apt-get install -y redis-server
    .venv/bin/python benchmarks/vs_redis.py                 # ~1-2 minutes
    .venv/bin/python benchmarks/vs_redis.py --sessions 20000 --silent 2000

The benchmark starts ``redis-server`` on 127.0.0.1 at a free port (no persistence) and stops
it. Last line: one JSON object with ``tether_heartbeats_per_s``, ``redis_heartbeats_per_s``,
``heartbeat_ratio``, ``tether_expiry_late_p99_s``, ``redis_expiry_late_p99_s``. Target: Tether
ahead on both (ratio > 1, lateness lower).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path, and benchmarks/http.py there
# would shadow the standard library's ``http``. Drop it.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import gc
import json
import shutil
import socket
import statistics
import subprocess
import threading
import time

import msgspec
import trio

from tether.engine import Engine, EngineConfig, Telemetry
from tether.engine.testing import NullTransport

WORKSPACE = "ws_bench"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")


def telemetry_samples() -> list[Telemetry]:
    return [Telemetry(cpu_percent=float(k % 100), memory_percent=float((k * 7) % 100),
                      disk_percent=float((k * 13) % 100), network_rx_bytes=k * 1000,
                      network_tx_bytes=k * 400, uptime_seconds=k) for k in range(64)]


# -- Tether ------------------------------------------------------------------------------------


async def tether_side(args: argparse.Namespace) -> tuple[float, list[float], int]:
    config = EngineConfig(heartbeat_timeout=args.timeout, grace_period=args.grace,
                          pending_timeout=3600, event_log_max=1_000_000)
    samples = telemetry_samples()
    async with Engine(config) as engine:
        transport = NullTransport()
        links = []
        for i in range(args.sessions):
            links.append(await engine.agent_hello(
                WORKSPACE, transport, machine_id=f"m{i:06d}", machine_hostname=f"h{i % 1000}"))
            if i % 1000 == 999:
                await trio.sleep(0)
        say(f"[tether] {args.sessions:,} sessions connected")
        gc.collect()
        gc.freeze()
        rates = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for k, link in enumerate(links):
                link.heartbeat(samples[k & 63])
            rates.append(len(links) / (time.perf_counter() - started))
            await trio.sleep(0)
        rate = statistics.median(rates)
        say(f"[tether] heartbeats: {rate:,.0f}/s (median of {args.rounds} rounds)")

        silent = links[-args.silent:]
        alive = links[:-args.silent]
        silent_ids = {link.session_id for link in silent}
        deadline: dict[str, float] = {}
        late: list[float] = []
        done = trio.Event()
        extra = args.timeout + args.grace
        async with trio.open_nursery() as nursery:
            sub = engine.subscribe(WORKSPACE)

            async def watch() -> None:
                async for event in sub:
                    if event.type == "session.disconnected" and event.session_id in silent_ids:
                        late.append(trio.current_time() - deadline[event.session_id])
                        if len(late) == len(silent_ids):
                            done.set()
                            return

            nursery.start_soon(watch)
            await trio.sleep(0)
            for k, link in enumerate(silent):  # the last heartbeat of each silent session
                link.heartbeat(samples[k & 63])
                deadline[link.session_id] = trio.current_time() + extra

            async def keep_alive() -> None:
                while True:
                    for k, link in enumerate(alive):
                        link.heartbeat(samples[k & 63])
                    await trio.sleep(1)

            nursery.start_soon(keep_alive)
            with trio.move_on_after(extra + args.wait):
                await done.wait()
            nursery.cancel_scope.cancel()
        missed = len(silent_ids) - len(late)
        say(f"[tether] expiry of {len(silent_ids):,}: noticed {len(late):,}, late p50 "
            f"{statistics.median(late) if late else float('nan'):.3f} s, p99 {p99(late):.3f} s"
            f", max {max(late) if late else float('nan'):.3f} s")
        engine.shutdown()
    gc.unfreeze()
    return rate, late, missed


# -- Redis -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_side(args: argparse.Namespace) -> tuple[float, list[float], int, str]:
    import redis

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--notify-keyspace-events", "Ex", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        version = client.info("server")["redis_version"]
        samples = [msgspec.json.encode(t) for t in telemetry_samples()]
        keys = [f"sess:{i:06d}" for i in range(args.sessions)]
        ttl = int(args.timeout + args.grace)

        def set_all(indices: range | list[int], times: dict[str, float] | None = None) -> None:
            batch = args.pipeline
            for start in range(0, len(indices), batch):
                pipe = client.pipeline(transaction=False)
                chunk = indices[start:start + batch]
                for i in chunk:
                    pipe.set(keys[i], samples[i & 63], ex=ttl)
                pipe.execute()
                if times is not None:
                    now = time.monotonic()
                    for i in chunk:
                        times[keys[i]] = now + ttl

        rates = []
        everyone = range(args.sessions)
        for _ in range(args.rounds):
            started = time.perf_counter()
            set_all(everyone)
            rates.append(args.sessions / (time.perf_counter() - started))
        rate = statistics.median(rates)
        say(f"[redis {version}] SET EX pipelined by {args.pipeline}: {rate:,.0f}/s "
            f"(median of {args.rounds} rounds)")

        silent = list(range(args.sessions - args.silent, args.sessions))
        alive = range(args.sessions - args.silent)
        silent_keys = {keys[i].encode() for i in silent}
        deadline: dict[str, float] = {}
        late: list[float] = []
        done = threading.Event()
        pubsub = client.pubsub()
        pubsub.subscribe("__keyevent@0__:expired")
        pubsub.get_message(timeout=1)  # the subscribe confirmation

        def listen() -> None:
            while not done.is_set():
                message = pubsub.get_message(timeout=0.5)
                if message is None or message["type"] != "message":
                    continue
                key = message["data"]
                if key in silent_keys:
                    late.append(time.monotonic() - deadline[key.decode()])
                    if len(late) == len(silent_keys):
                        done.set()

        set_all(everyone)  # everyone fresh; then the silent ones' last heartbeat
        set_all(silent, deadline)
        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        give_up = time.monotonic() + ttl + args.wait
        while not done.is_set() and time.monotonic() < give_up:
            started = time.monotonic()
            set_all(alive)
            done.wait(max(0.0, 1 - (time.monotonic() - started)))
        done.set()
        listener.join()
        missed = len(silent_keys) - len(late)
        say(f"[redis] expiry of {len(silent_keys):,}: noticed {len(late):,}"
            + (f" ({missed:,} not within {ttl + args.wait:.0f} s)" if missed else "")
            + f", late p50 {statistics.median(late) if late else float('nan'):.3f} s, "
            f"p99 {p99(late):.3f} s, max {max(late) if late else float('nan'):.3f} s")
        pubsub.close()
        client.close()
        return rate, late, missed, version
    finally:
        server.terminate()
        server.wait(timeout=10)


def main(args: argparse.Namespace) -> dict[str, object]:
    tether_rate, tether_late, tether_missed = trio.run(tether_side, args)
    redis_rate, redis_late, redis_missed, version = redis_side(args)
    # a session never noticed within the wait counts as late by the whole wait
    tether_late += [args.wait] * tether_missed
    redis_late += [args.wait] * redis_missed
    tether_p99, redis_p99 = p99(tether_late), p99(redis_late)
    return {
        "sessions": args.sessions,
        "silent": args.silent,
        "tether_heartbeats_per_s": round(tether_rate, 1),
        "redis_heartbeats_per_s": round(redis_rate, 1),
        "heartbeat_ratio": round(tether_rate / redis_rate, 2),
        "tether_expiry_late_p50_s": round(statistics.median(tether_late), 3),
        "tether_expiry_late_p99_s": round(tether_p99, 3),
        "redis_expiry_late_p50_s": round(statistics.median(redis_late), 3),
        "redis_expiry_late_p99_s": round(redis_p99, 3),
        "tether_missed": tether_missed,
        "redis_missed": redis_missed,
        "redis_version": version,
        "targets_met": bool(tether_rate > redis_rate and tether_p99 < redis_p99),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--silent", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pipeline", type=int, default=1000, help="SETs per round trip")
    parser.add_argument("--timeout", type=float, default=10.0, help="heartbeat timeout (s)")
    parser.add_argument("--grace", type=float, default=5.0, help="grace period (s)")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds past the deadline to wait for every expiry")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server not found: apt-get update && apt-get install -y "
                         "redis-server")
    print(json.dumps(main(args)))
