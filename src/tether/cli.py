"""The ``tether`` command: ``tether serve`` and ``tether keys create``.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its flags and sets
``run`` to the function that carries it out; a new subcommand (``tether sim``) is one more such
function added to :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import trio

from tether.engine import Engine, EngineConfig, TetherError
from tether.http import (
    DEFAULT_GC_YOUNG,
    DEFAULT_WORKSPACE,
    HttpSettings,
    KeyStore,
    create_app,
    create_key,
    serve,
    server_config,
    tune_gc,
)
from tether.webhooks import WebhookConfig, Webhooks

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("tether")


def default_keys_file() -> Path:
    """``$TETHER_KEYS_FILE``, else ``$XDG_CONFIG_HOME/tether/keys.json`` (``~/.config``)."""
    explicit = os.environ.get("TETHER_KEYS_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether" / "keys.json"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be from 0 to 1")
    return value


# -- tether serve --------------------------------------------------------------------------------


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = EngineConfig()
    h = HttpSettings()
    p = subparsers.add_parser(
        "serve", help="serve the Sessions REST API and the agent socket",
        description="Serve the Sessions REST API and the agent WebSocket (/v1/agent).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    p.add_argument("--keys", type=Path, default=None, metavar="FILE",
                   help="keys file (default $TETHER_KEYS_FILE or ~/.config/tether/keys.json)")
    timing = p.add_argument_group("session timings (seconds)")
    timing.add_argument("--heartbeat-interval", type=_positive, default=d.heartbeat_interval)
    timing.add_argument("--heartbeat-timeout", type=_positive, default=d.heartbeat_timeout)
    timing.add_argument("--grace-period", type=_positive, default=d.grace_period)
    timing.add_argument("--pending-timeout", type=_positive, default=d.pending_timeout)
    timing.add_argument("--background-timeout", type=_positive, default=d.background_timeout)
    timing.add_argument("--retention", type=_positive, default=d.retention,
                        help="how long ended sessions stay queryable")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-body-bytes", type=_count, default=h.max_body_bytes)
    limits.add_argument("--max-frame-bytes", type=_count, default=h.max_frame_bytes)
    limits.add_argument("--max-violations", type=_count, default=h.max_violations,
                        help="agent protocol violations before its socket is closed")
    limits.add_argument("--agent-frame-rate", type=float, default=h.agent_frame_rate,
                        metavar="FRAMES", help="frames per second one agent may send, "
                        "sustained; past it its socket is read no faster (0: no limit)")
    limits.add_argument("--agent-frame-burst", type=_count, default=h.agent_frame_burst,
                        metavar="FRAMES", help="frames one agent may send at once")
    hooks = p.add_argument_group("webhooks")
    w = WebhookConfig()
    hooks.add_argument("--webhook-retry-base", type=_positive, default=w.retry_base,
                       metavar="SECONDS", help="delay before the first retry; doubles after")
    hooks.add_argument("--webhook-timeout", type=_positive, default=w.timeout,
                       metavar="SECONDS", help="one delivery attempt's whole budget")
    hooks.add_argument("--webhook-max-failures", type=int, default=w.max_consecutive_failures,
                       metavar="N", help="failed events in a row that disable an endpoint "
                       "(0: never)")
    hooks.add_argument("--allow-private-webhooks", action="store_true",
                       help="let webhook URLs reach loopback and private addresses "
                       "(development and tests)")
    p.add_argument("--drain-timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT: how long to let agents be told, sessions end and "
                   "their events reach the feed and webhooks before exiting (10)")
    p.add_argument("--gc-young", type=_non_negative, default=DEFAULT_GC_YOUNG, metavar="N",
                   help="allocations between young garbage collections (0: Python's 700); "
                   f"see benchmarks/README.md, load ({DEFAULT_GC_YOUNG})")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.add_argument("--access-log", action="store_true", help="log every request to stdout")
    p.set_defaults(run=_run_serve)


def load_keys(path: Path, out: TextIO | None = None) -> KeyStore:
    """Keys from the environment and ``path``; on a first run with none, make ``ws_default``'s."""
    keys = KeyStore()
    keys.load_env()
    if path.exists():
        keys.load_file(path)
    if len(keys) == 0:
        api_key = create_key(path, "api", DEFAULT_WORKSPACE)
        agent_token = create_key(path, "agent", DEFAULT_WORKSPACE)
        keys.load_file(path)
        print(
            f"First run: created {path} for workspace {DEFAULT_WORKSPACE}.\n"
            f"  API key (REST API):        {api_key}\n"
            f"  Agent token (/v1/agent):   {agent_token}\n"
            "They are shown once; the file stores only their hashes.",
            file=out or sys.stdout,
            flush=True,
        )
    return keys


async def _drain(engine: Engine, webhooks: Webhooks, deadline: float) -> None:
    """Wait (until ``deadline``) for every session to end and every webhook to go out, then
    end the event streams.

    The feed needs no wait: a session's events are in the log the moment it ends. Webhook
    deliveries get until the deadline; what is still undelivered then is logged. Once both are
    done no event can come, so the event log is closed: open event streams (SSE) send what they
    have not sent yet and end, instead of holding the exit until the deadline.
    """
    with trio.move_on_at(deadline):
        while engine.live_sessions:
            await trio.sleep(0.01)
        quiet = 0
        while quiet < 3:  # the consumer takes events from its subscription a little later
            quiet = quiet + 1 if webhooks.undelivered == 0 else 0
            await trio.sleep(0.02)
        engine.events.close()
    if engine.live_sessions or webhooks.undelivered:
        log.warning("drain timeout: %d sessions still live, %d webhook deliveries undelivered",
                    engine.live_sessions, webhooks.undelivered)


async def _serve(
    engine_config: EngineConfig,
    webhook_config: WebhookConfig,
    keys: KeyStore,
    settings: HttpSettings,
    args: argparse.Namespace,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully within ``--drain-timeout``.

    In order: stop accepting connections; end every live session (reason ``server_shutdown``:
    each agent gets an ``error`` frame ``server_shutdown`` and a 1001 close, each session its
    terminal event); let webhook delivery flush; exit. A second signal exits at once.
    """
    config = server_config(args.host, args.port, settings, access_log=args.access_log)
    drain = args.drain_timeout
    config.graceful_timeout = drain  # open requests (event streams) may run until the deadline
    stop = trio.Event()
    async with Engine(engine_config) as engine, trio.open_nursery() as services:
        # Webhook delivery outlives the server (it is an event-bus consumer beside it).
        webhooks = Webhooks(engine, webhook_config)
        await services.start(webhooks.run)
        app = create_app(engine, keys, settings, webhooks)
        deadline = trio.current_time() + 10**9

        async def on_signal() -> None:
            nonlocal deadline
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("%s again: exiting now", signal.Signals(signum).name)
                        services.cancel_scope.cancel()
                        return
                    log.info("%s: shutting down (drain %g s)", signal.Signals(signum).name,
                             drain)
                    deadline = trio.current_time() + drain
                    stop.set()  # the server stops accepting
                    engine.shutdown()  # sessions end; their agents are told and closed

        services.start_soon(on_signal)
        tune_gc(args.gc_young)  # start-up is done: freeze it, and collect young objects less often
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            log.info("serving on %s", ", ".join(binds))
            await stop.wait()
            nursery.cancel_scope.deadline = deadline
            await _drain(engine, webhooks, deadline)
        services.cancel_scope.cancel()
    log.info("stopped")


def _run_serve(args: argparse.Namespace) -> int:
    try:
        engine_config = EngineConfig(
            heartbeat_interval=args.heartbeat_interval, heartbeat_timeout=args.heartbeat_timeout,
            grace_period=args.grace_period, pending_timeout=args.pending_timeout,
            background_timeout=args.background_timeout, retention=args.retention,
        )
        settings = HttpSettings(
            max_body_bytes=args.max_body_bytes, max_frame_bytes=args.max_frame_bytes,
            max_violations=args.max_violations, agent_frame_rate=args.agent_frame_rate,
            agent_frame_burst=args.agent_frame_burst,
        )
        webhook_config = WebhookConfig(
            retry_base=args.webhook_retry_base, timeout=args.webhook_timeout,
            max_consecutive_failures=args.webhook_max_failures,
            allow_private=args.allow_private_webhooks,
        )
        keys = load_keys(args.keys or default_keys_file())
    except (TetherError, ValueError, OSError) as error:
        print(f"tether serve: {error}", file=sys.stderr)
        return 2
    trio.run(_serve, engine_config, webhook_config, keys, settings, args)
    return 0


# -- tether keys ---------------------------------------------------------------------------------


def _add_keys(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("keys", help="manage API keys and agent tokens")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="make an API key (or with --agent, an agent token) and print it once"
    )
    create.add_argument("--workspace", required=True, help="the workspace it belongs to")
    create.add_argument("--agent", action="store_true", help="an agent token (agt_...)")
    create.add_argument("--keys", type=Path, default=None, metavar="FILE",
                        help="keys file (default $TETHER_KEYS_FILE or ~/.config/tether/keys.json)")
    create.set_defaults(run=_run_keys_create)


def _run_keys_create(args: argparse.Namespace) -> int:
    path = args.keys or default_keys_file()
    try:
        key = create_key(path, "agent" if args.agent else "api", args.workspace)
    except (ValueError, OSError) as error:
        print(f"tether keys create: {error}", file=sys.stderr)
        return 2
    print(key)
    print(f"(stored its hash in {path}; this is the only time it is shown)", file=sys.stderr)
    return 0


# -- tether sim ----------------------------------------------------------------------------------


def _add_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tether.sim import SCENARIOS

    p = subparsers.add_parser(
        "sim", help="run simulated agents against a server and check it against them",
        description="Simulated agents over WebSockets (/v1/agent under --url): live progress, "
        "a summary, and with --api-key a check of every session over the REST API. Exits "
        "non-zero on any protocol error or mismatch.",
    )
    p.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--agent-token", required=True, help="a workspace agent token (agt_...)")
    p.add_argument("--agents", type=_count, required=True, help="how many agents")
    p.add_argument("--duration", type=_positive, required=True, help="seconds of simulation")
    p.add_argument("--scenario", default="mixed",
                   help=f"{', '.join(SCENARIOS)}, or kind=weight,... (default mixed)")
    p.add_argument("--seed", type=int, default=0, help="the fleet is reproducible from it")
    p.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    p.add_argument("--api-key", default=None, help="an API key of the same workspace: check "
                   "every session's status, history and telemetry over REST")
    p.add_argument("--operators", type=_share, default=0.1, metavar="SHARE",
                   help="share of machines (0 to 1) an operator visits over REST: attach, run "
                   "commands, detach; needs --api-key (default 0.1)")
    p.add_argument("--heartbeat-every", type=_positive, default=None, metavar="SECONDS",
                   help="heartbeat period (default: the server's heartbeat_interval)")
    p.add_argument("--agents-per-process", type=_count, default=None,
                   help="spread agents over processes of at most this many (default: the "
                   "open-files limit less a reserve)")
    p.set_defaults(run=_run_sim)


def _run_sim(args: argparse.Namespace) -> int:
    import msgspec

    from tether.sim import SimConfig, parse_weights, run_sim

    try:
        parse_weights(args.scenario)
    except ValueError as error:
        print(f"tether sim: {error}", file=sys.stderr)
        return 2
    config = SimConfig(
        url=args.url, agent_token=args.agent_token, agents=args.agents, duration=args.duration,
        scenario=args.scenario, seed=args.seed, api_key=args.api_key, operators=args.operators,
        heartbeat_every=args.heartbeat_every, agents_per_process=args.agents_per_process,
    )
    result = trio.run(run_sim, config)
    print(result.summary(), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(msgspec.json.encode(result).decode(), flush=True)
    return 0 if result.ok else 1


# -- entry point ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Tether session engine")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    _add_keys(subparsers)
    _add_sim(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
