"""``tether serve``: the Sessions REST API, the agent socket, the event feed and webhooks."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, TextIO

import trio
from coredis.exceptions import RedisError

from tether.engine import Engine, EngineConfig, TetherError
from tether.http import (
    DEFAULT_GC_YOUNG,
    DEFAULT_WORKSPACE,
    HttpSettings,
    KeysFileWatcher,
    KeyStore,
    create_app,
    create_key,
    serve,
    server_config,
    tune_gc,
)
from tether.store import DEFAULT_PREFIX, Keys, RedisStore, default_node_id
from tether.webhooks import WebhookConfig, Webhooks

from ._args import (
    DefaultsFormatter,
    add_keys_option,
    count,
    default_keys_file,
    non_negative,
    non_negative_seconds,
    positive,
)
from ._workers import supervise

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

log = logging.getLogger("tether")
#: How long past the drain deadline the engine's own exit (actors returning, the last writes)
#: may take before the process stops anyway.
_EXIT_MARGIN = 5.0


def add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = EngineConfig()
    h = HttpSettings()
    w = WebhookConfig()
    p = subparsers.add_parser(
        "serve", help="serve the Sessions REST API and the agent socket",
        description="Serve the Sessions REST API, the agent WebSocket (/v1/agent), the event "
        "feed and webhooks. State is in memory: a restart keeps the keys (in the keys file) and "
        "loses sessions, command histories, webhooks and events.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    add_keys_option(p)
    p.add_argument("--keys-reload-interval", type=non_negative_seconds, default=1.0,
                   metavar="SECONDS", help="how often to look for changes to the keys file "
                   "(a revoked key stops working then; 0: only on SIGHUP)")
    timing = p.add_argument_group("session timings (seconds)")
    timing.add_argument("--heartbeat-interval", type=positive, default=d.heartbeat_interval,
                        metavar="S", help="how often agents are told to heartbeat")
    timing.add_argument("--heartbeat-timeout", type=positive, default=d.heartbeat_timeout,
                        metavar="S",
                        help="silence after which a CONNECTED session enters GRACE_PERIOD")
    timing.add_argument("--grace-period", type=positive, default=d.grace_period,
                        metavar="S", help="how long an agent has to resume before its session ends")
    timing.add_argument("--pending-timeout", type=positive, default=d.pending_timeout,
                        metavar="S", help="how long a PENDING session waits for its agent")
    timing.add_argument("--background-timeout", type=positive, default=d.background_timeout,
                        metavar="S",
                        help="how long BACKGROUND lasts without a heartbeat or foreground")
    timing.add_argument("--retention", type=positive, default=d.retention,
                        metavar="S", help="how long ended sessions stay queryable")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-body-bytes", type=count, default=h.max_body_bytes, metavar="N",
                        help="largest request body (413 past it)")
    limits.add_argument("--max-frame-bytes", type=count, default=h.max_frame_bytes, metavar="N",
                        help="largest agent frame")
    limits.add_argument("--max-violations", type=count, default=h.max_violations, metavar="N",
                        help="agent protocol violations before its socket is closed")
    limits.add_argument("--agent-frame-rate", type=float, default=h.agent_frame_rate,
                        metavar="FRAMES", help="frames per second one agent may send, "
                        "sustained; past it its socket is read no faster (0: no limit)")
    limits.add_argument("--agent-frame-burst", type=count, default=h.agent_frame_burst,
                        metavar="FRAMES", help="frames one agent may send at once")
    output = p.add_argument_group("session output")
    output.add_argument("--output-buffer-bytes", type=count, default=d.output_buffer_bytes,
                        metavar="N", help="each session keeps its last N bytes of output, "
                        "through its grace period until it is purged")
    output.add_argument("--output-memory-bytes", type=count, default=d.output_memory_bytes,
                        metavar="N", help="every session's output together: past it the "
                        "largest buffers give up their oldest bytes first")
    output.add_argument("--stream-queue-bytes", type=count, default=h.stream_queue_bytes,
                        metavar="N", help="output an attach stream may have waiting for its "
                        "client; past it the stream is closed (4008 slow_consumer) and the "
                        "client re-attaches from its last offset")
    hooks = p.add_argument_group("webhooks")
    hooks.add_argument("--webhook-retry-base", type=positive, default=w.retry_base,
                       metavar="SECONDS", help="delay before the first retry; doubles after")
    hooks.add_argument("--webhook-timeout", type=positive, default=w.timeout,
                       metavar="SECONDS", help="one delivery attempt's whole budget")
    hooks.add_argument("--webhook-max-failures", type=int, default=w.max_consecutive_failures,
                       metavar="N", help="failed events in a row that disable an endpoint "
                       "(0: never)")
    hooks.add_argument("--allow-private-webhooks", action="store_true",
                       help="let webhook URLs reach loopback and private addresses "
                       "(development and tests; refused without it)")
    store = p.add_argument_group("state in Redis (without --redis, in memory)")
    store.add_argument("--redis", default=os.environ.get("TETHER_REDIS_URL"), metavar="URL",
                       help="keep sessions, their histories and the event log in Redis, e.g. "
                       "redis://127.0.0.1:6379/0, so they outlive the process "
                       "(default: $TETHER_REDIS_URL)")
    store.add_argument("--redis-prefix", default=DEFAULT_PREFIX, metavar="P",
                       help="every key Tether writes starts with it (default %(default)s)")
    store.add_argument("--redis-outage-budget", type=positive, default=30.0, metavar="SECONDS",
                       help="how long Redis may not answer before the node gives up and exits "
                       "non-zero for its supervisor to restart it; meanwhile agents stay "
                       "connected, reads are served and writes get 503 (default %(default)s)")
    store.add_argument("--node-id", default=None, metavar="ID",
                       help="this node's name: in Redis, in the X-Tether-Node header and in "
                       "/healthz (default: hostname, pid and a random suffix). A node started "
                       "again under the same id takes its sessions back at once; under a new "
                       "one, after the old one's lease lapses")
    store.add_argument("--lease-ttl", type=positive, default=10.0, metavar="SECONDS",
                       help="how long after a node stops (a crash, a pause) other nodes adopt "
                       "its live sessions; the node renews its lease three times per TTL "
                       "(default %(default)s)")
    store.add_argument("--workers", type=count, default=1, metavar="N",
                       help="start N nodes on this host and port, one process each, sharing "
                       "the listening socket and the Redis state (needs --redis): one command "
                       "uses every core. Each is named <node id>-<i>; one that dies is started "
                       "again")
    p.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--drain-timeout", type=positive, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT: how long to let agents be told, sessions end and "
                   "their events reach the feed and webhooks before exiting")
    p.add_argument("--gc-young", type=non_negative, default=DEFAULT_GC_YOUNG, metavar="N",
                   help="allocations between young garbage collections (0: Python's 700); "
                   "see benchmarks/README.md, load")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="the least severe log records written to stderr")
    p.add_argument("--access-log", action="store_true", help="log every request to stdout")
    p.set_defaults(run=run_serve)


def load_keys(path: Path, out: TextIO | None = None) -> KeyStore:
    """Keys from the environment and ``path``; on a first run with none, make ``ws_default``'s.

    Says which keys file is in use (and, on a first run, the new credentials) on ``out``.
    """
    out = out or sys.stdout
    keys = KeyStore.read(path)
    if len(keys) == 0:
        api_key = create_key(path, "api", DEFAULT_WORKSPACE)
        agent_token = create_key(path, "agent", DEFAULT_WORKSPACE)
        keys = KeyStore.read(path)
        print(
            f"First run: created {path} for workspace {DEFAULT_WORKSPACE}.\n"
            f"  API key (REST API):        {api_key}\n"
            f"  Agent token (/v1/agent):   {agent_token}\n"
            "They are shown once; the file stores only their hashes.",
            file=out,
        )
    state = "" if path.exists() else ", not found: environment keys only"
    print(f"Keys: {path}{state} ({_counted(keys.count('api'), 'API key')}, "
          f"{_counted(keys.count('agent'), 'agent token')})", file=out, flush=True)
    return keys


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class OutageBudgetSpent(Exception):
    """Redis has not answered for longer than ``--redis-outage-budget``."""


async def watch_store(engine: Engine, budget: float) -> None:
    """Exit (by raising) once the store has been away for longer than ``budget`` seconds."""
    while True:
        outage = engine.store_outage
        if outage is not None and outage[0] > budget:
            raise OutageBudgetSpent(f"Redis has not answered for {outage[0]:.0f} s "
                                    f"(budget {budget:g} s): {outage[1]}")
        await trio.sleep(0.25)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


@asynccontextmanager
async def open_engine(config: EngineConfig, args: argparse.Namespace) -> AsyncIterator[Engine]:
    """The engine, on Redis with ``--redis``: then it carries on the sessions Redis holds."""
    if not args.redis:
        async with Engine(config) as engine:
            yield engine
        return
    node_id = args.node_id
    store = RedisStore(args.redis, prefix=args.redis_prefix, node_id=node_id,
                       lease_ttl=args.lease_ttl, max_events=config.event_log_max)
    async with store, Engine(config, store=store) as engine:
        log.info("state in Redis at %s (prefix %r, node %s): %d sessions retained, %d live",
                 args.redis, args.redis_prefix, node_id, engine.retained_sessions,
                 engine.live_sessions)
        yield engine


async def _drain(engine: Engine, webhooks: Webhooks, deadline: float) -> None:
    """Wait (until ``deadline``) for every session to end and every webhook to go out, then
    end the event streams.

    The feed needs no wait: a session's events are in the log the moment it ends. Webhook
    deliveries get until the deadline; what is still undelivered then is logged. Once both are
    done no event can come, so the event log is closed: open event streams (SSE) send what they
    have not sent yet and end, instead of holding the exit until the deadline.
    """
    with trio.move_on_at(deadline):
        if engine.journal is not None:  # Redis mode: sessions are handed over, not ended
            while engine.actors_running:
                await trio.sleep(0.01)
            await engine.journal.flush()
            await webhooks.flush()  # pending deliveries go out after the restart
        while engine.live_sessions and engine.journal is None:
            await trio.sleep(0.01)
        quiet = 0 if engine.journal is None else 3
        while quiet < 3:  # the consumer takes events from its subscription a little later
            quiet = quiet + 1 if webhooks.undelivered == 0 else 0
            await trio.sleep(0.02)
        engine.events.close()
    if (engine.live_sessions and engine.journal is None) or webhooks.undelivered:
        log.warning("drain timeout: %d sessions still live, %d webhook deliveries undelivered",
                    engine.live_sessions, webhooks.undelivered)


async def _serve(
    engine_config: EngineConfig,
    webhook_config: WebhookConfig,
    keys: KeysFileWatcher,
    settings: HttpSettings,
    args: argparse.Namespace,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully within ``--drain-timeout``.

    In order: stop accepting connections; end every live session (reason ``server_shutdown``:
    each agent gets an ``error`` frame ``server_shutdown`` and a 1001 close, each session its
    terminal event); let webhook delivery flush; exit. A second signal exits at once. SIGHUP
    re-reads the keys.
    """
    config = server_config(args.host, args.port, settings, access_log=args.access_log)
    if args.listen_fd is not None:  # a worker of ``--workers``: the parent's socket
        config.bind = [f"fd://{args.listen_fd}"]
    drain = args.drain_timeout
    config.graceful_timeout = drain  # open requests (event streams) may run until the deadline
    stop = trio.Event()
    # The exit is bounded: a store that does not answer (Redis gone) must not hold the process
    # past the drain deadline and a margin, and a second signal ends it at once. What was not
    # written by then is lost; another node adopts this one's sessions once its lease lapses.
    exit_scope = trio.CancelScope()
    with exit_scope:
        async with open_engine(engine_config, args) as engine, trio.open_nursery() as services:
            # Webhook delivery outlives the server (it is an event-bus consumer beside it).
            store = engine.store.webhooks if isinstance(engine.store, RedisStore) else None
            webhooks = Webhooks(engine, webhook_config, store=store)
            await services.start(webhooks.run)
            await services.start(keys.run)
            app = create_app(engine, keys.keys, settings, webhooks)
            deadline = trio.current_time() + 10**9

            def shut_down(why: str) -> None:
                nonlocal deadline
                log.info("%s: shutting down (drain %g s)", why, drain)
                deadline = trio.current_time() + drain
                exit_scope.deadline = deadline + _EXIT_MARGIN
                stop.set()  # the server stops accepting
                if engine.journal is None:
                    engine.shutdown()  # sessions end; their agents are told and closed
                else:
                    engine.drain()  # sessions are handed over; agents told to resume

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM,
                                               signal.SIGHUP) as signals:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            keys.reload()
                            continue
                        if stop.is_set():
                            log.warning("%s again: exiting now", signal.Signals(signum).name)
                            exit_scope.cancel()
                            return
                        shut_down(signal.Signals(signum).name)

            async def outlive_no_parent() -> None:
                """A worker of ``--workers`` whose parent died (kill -9) stops as if told to."""
                parent = os.getppid()
                while os.getppid() == parent:
                    await trio.sleep(1.0)
                if not stop.is_set():
                    shut_down("the parent process is gone")

            services.start_soon(on_signal)
            if args.listen_fd is not None:
                services.start_soon(outlive_no_parent)
            if engine.journal is not None:
                services.start_soon(watch_store, engine, args.redis_outage_budget)
            # start-up is done: freeze it, and collect young objects less often
            tune_gc(args.gc_young)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    partial(serve, app, config, shutdown_trigger=stop.wait))
                log.info("serving on %s", ", ".join(binds))
                await stop.wait()
                nursery.cancel_scope.deadline = deadline
                await _drain(engine, webhooks, deadline)
            services.cancel_scope.cancel()
    if exit_scope.cancelled_caught:
        log.warning("exit cut short: what was not written to the store is lost; another node "
                    "adopts this node's sessions once its lease lapses")
    log.info("stopped")


def run_serve(args: argparse.Namespace) -> int:
    try:
        args.node_id = args.node_id or default_node_id()
        engine_config = EngineConfig(
            heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
            grace_period=args.grace_period, pending_timeout=args.pending_timeout,
            background_timeout=args.background_timeout, retention=args.retention,
            output_buffer_bytes=args.output_buffer_bytes,
            output_memory_bytes=args.output_memory_bytes,
        )
        settings = HttpSettings(
            max_body_bytes=args.max_body_bytes, max_frame_bytes=args.max_frame_bytes,
            max_violations=args.max_violations, agent_frame_rate=args.agent_frame_rate,
            agent_frame_burst=args.agent_frame_burst, stream_queue_bytes=args.stream_queue_bytes,
            node_id=args.node_id,
        )
        webhook_config = WebhookConfig(
            retry_base=args.webhook_retry_base, timeout=args.webhook_timeout,
            max_consecutive_failures=args.webhook_max_failures,
            allow_private=args.allow_private_webhooks,
        )
        path = args.keys or default_keys_file()
        Keys(args.redis_prefix)  # checked before anything starts
        if args.workers > 1 and not args.redis:
            raise ValueError("--workers needs --redis: the workers share their state there")
        keys = KeysFileWatcher(load_keys(path), path, args.keys_reload_interval)
    except (TetherError, ValueError, OSError) as error:
        print(f"tether serve: {error}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return trio.run(supervise, args, args.argv)
    failure: list[BaseException] = []
    try:
        trio.run(_serve, engine_config, webhook_config, keys, settings, args)
    except* (RedisError, OutageBudgetSpent) as group:
        failure += _leaves(group)
    if failure:
        print(f"tether serve: Redis at {args.redis}: {failure[0]}", file=sys.stderr)
        return 1
    return 0
