"""``tether sim``: simulated agents against a running server, checked against what they did."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import msgspec
import trio

from tether.sim import SCENARIOS, SimConfig, node_urls, parse_weights, run_sim

from ._args import count, positive, share

if TYPE_CHECKING:
    import argparse


def add_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim", help="run simulated agents against a server and check it against them",
        description="Simulated agents over WebSockets (/v1/agent under --url): live progress, "
        "a summary, and with --api-key a check of every session over the REST API and of "
        "every attach stream's bytes against what its agent wrote. Exits non-zero on any "
        "protocol error or mismatch.",
    )
    p.add_argument("--url", required=True,
                   help="the server's base URL, e.g. http://127.0.0.1:8080, or a cluster's "
                   "nodes, comma-separated: agents are spread over them, move to another node "
                   "when they reconnect, and are checked on a node other than their own")
    p.add_argument("--agent-token", required=True, help="a workspace agent token (agt_...)")
    p.add_argument("--agents", type=count, required=True, help="how many agents")
    p.add_argument("--duration", type=positive, required=True, help="seconds of simulation")
    p.add_argument("--scenario", default="mixed",
                   help=f"{', '.join(SCENARIOS)}, or kind=weight,... (default mixed)")
    p.add_argument("--seed", type=int, default=0, help="the fleet is reproducible from it")
    p.add_argument("--json", action="store_true", help="end with the summary as one JSON line")
    p.add_argument("--api-key", default=None, help="an API key of the same workspace: check "
                   "every session's status, history and telemetry over REST")
    p.add_argument("--operators", type=share, default=0.1, metavar="SHARE",
                   help="share of machines (0 to 1) an operator visits over REST: attach, run "
                   "commands, detach; needs --api-key (default 0.1)")
    p.add_argument("--busy", type=share, default=0.1, metavar="SHARE",
                   help="share of agents (0 to 1) whose machines stream output continuously; "
                   "every agent also prints its commands' output (default 0.1)")
    p.add_argument("--observers", type=share, default=0.05, metavar="SHARE",
                   help="share of machines (0 to 1) an observer watches through an attach "
                   "stream, dropping it once and re-attaching from its offset; operators watch "
                   "theirs too, and every client's bytes are checked against what the agent "
                   "wrote; needs --api-key (default 0.05)")
    p.add_argument("--output-buffer-bytes", type=count, default=1024 * 1024, metavar="BYTES",
                   help="the server's --output-buffer-bytes: a stream's gap is expected only "
                   "for output older than this (default 1 MiB)")
    p.add_argument("--heartbeat-every", type=positive, default=None, metavar="SECONDS",
                   help="heartbeat period (default: the server's heartbeat_interval)")
    p.add_argument("--agents-per-process", type=count, default=None,
                   help="spread agents over processes of at most this many (default: the "
                   "open-files limit less a reserve)")
    p.set_defaults(run=run_sim_command)


def run_sim_command(args: argparse.Namespace) -> int:
    try:
        parse_weights(args.scenario)
        node_urls(args.url)
    except ValueError as error:
        print(f"tether sim: {error}", file=sys.stderr)
        return 2
    config = SimConfig(
        url=args.url, agent_token=args.agent_token, agents=args.agents, duration=args.duration,
        scenario=args.scenario, seed=args.seed, api_key=args.api_key, operators=args.operators,
        busy=args.busy, observers=args.observers, output_retention=args.output_buffer_bytes,
        heartbeat_every=args.heartbeat_every, agents_per_process=args.agents_per_process,
    )
    result = trio.run(run_sim, config)
    print(result.summary(), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(msgspec.json.encode(result).decode(), flush=True)
    return 0 if result.ok else 1
