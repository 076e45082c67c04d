"""``tether sim`` end to end: a real server in the test on the real clock (short runs; no
lifecycle step waits on it), the command as a separate process, ``--json`` on its last line."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from tether.cli import build_parser

from .conftest import AGENT_TOKEN, API_KEY

KEYS = {"agents", "connected_peak", "messages_sent", "messages_per_s", "errors", "mismatches",
        "output_bytes", "output_resent", "stream_clients", "stream_reattaches", "stream_gaps",
        "stream_refused", "stream_bytes", "output_mismatches"}


async def tether_sim(*args: str) -> tuple[int, dict, str]:
    result = await trio.run_process(
        [sys.executable, "-m", "tether.cli", "sim", *args], capture_stdout=True,
        capture_stderr=True, check=False,
    )
    last = result.stdout.decode().strip().splitlines()[-1]
    return result.returncode, json.loads(last), result.stderr.decode()


async def test_sim_cli_json_over_two_processes(server):
    with trio.fail_after(60):
        code, summary, err = await tether_sim(
            "--url", server.url, "--agent-token", AGENT_TOKEN, "--agents", "8",
            "--duration", "2", "--heartbeat-every", "0.5", "--scenario", "mixed", "--seed", "3",
            "--api-key", API_KEY, "--json", "--agents-per-process", "4", "--operators", "1",
            "--busy", "1", "--observers", "1",
        )
    assert code == 0, err
    assert set(summary) >= KEYS
    assert summary["agents"] == 8 and summary["processes"] == 2
    assert (summary["errors"], summary["mismatches"]) == (0, 0)
    # operators in both worker processes: accepted commands answered and found in histories
    assert summary["operator_commands"] >= 4 and summary["notes"] == []
    assert summary["operator_answered"] == summary["operator_commands"]
    assert "operators:" in err
    # every operator and observer stream in both processes got its agent's bytes, exactly
    assert summary["output_mismatches"] == 0 and summary["output_bytes"] > 0
    assert summary["stream_clients"] >= 4 and summary["stream_bytes"] > 0
    assert "output mismatches" in err
    assert summary["checked"] is True and summary["sessions"] >= 8
    assert summary["connected_peak"] >= 6 and summary["messages_sent"] > 8
    assert summary["messages_per_s"] > 0
    assert "connected" in err and "msgs/s" in err  # live progress


async def test_sim_cli_fails_on_protocol_errors(server):
    with trio.fail_after(60):
        code, summary, _ = await tether_sim(
            "--url", server.url, "--agent-token", "agt_wrong_token", "--agents", "3",
            "--duration", "1", "--json",
        )
    assert code == 1
    assert summary["errors"] == 3 and summary["connected_peak"] == 0
    assert summary["notes"] == ["operators skipped: they need --api-key",
                                "observers skipped: they need --api-key"]
    assert summary["operator_commands"] == 0


def test_sim_cli_flags():
    args = build_parser().parse_args(
        ["sim", "--url", "http://127.0.0.1:1", "--agent-token", "t", "--agents", "5",
         "--duration", "3", "--scenario", "churn", "--seed", "9", "--json", "--api-key", "k",
         "--operators", "0.25"])
    assert (args.agents, args.duration, args.scenario, args.seed, args.json, args.api_key,
            args.operators) == (5, 3.0, "churn", 9, True, "k", 0.25)
    defaults = build_parser().parse_args(
        ["sim", "--url", "u", "--agent-token", "t", "--agents", "1", "--duration", "1"])
    assert (defaults.operators, defaults.busy, defaults.observers,
            defaults.output_buffer_bytes) == (0.1, 0.1, 0.05, 1024 * 1024)


async def test_sim_cli_unknown_scenario():
    result = await trio.run_process(
        [sys.executable, "-m", "tether.cli", "sim", "--url", "http://127.0.0.1:1",
         "--agent-token", "t", "--agents", "1", "--duration", "1", "--scenario", "nope"],
        capture_stderr=True, check=False, stdout=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert b"unknown scenario" in result.stderr
