"""A new user's first minutes, on a plain install: the guard against a ``tether`` that only works
with the dev extras installed (it once crashed on every command for want of a dev dependency).

A fresh venv gets a plain ``pip install`` of this checkout (no extras), and a fresh HOME. Then,
as the README's first command does: ``tether serve`` (on a free port), which prints first-run
credentials; ``/healthz``; the contract's first request with the API key; an agent with the
agent token; every other subcommand (``--version``, ``keys list``, a short ``tether sim``); and
SIGTERM, which must end it cleanly. Slow (a real install, ~20 s): it is what CI must never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from tether import wire

from .serving import free_port, serve_process, wait_ready

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                     "__pycache__", ".*_cache", ".hypothesis")


def _readme_first_command() -> str:
    """The first indented command line of the README (how a new user installs and serves)."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("    ") and line.strip():
            return line.strip()
    raise AssertionError("README.md has no indented command")


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with a plain ``pip install`` of a copy of this checkout, and nothing else."""
    base = tmp_path_factory.mktemp("plain")
    source = base / "tether"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return venv


def _user_env(home: Path) -> dict[str, str]:
    """A new user's environment: a fresh HOME, and none of Tether's variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TETHER_", "XDG_", "VIRTUAL_ENV", "PYTHON"))}
    env["HOME"] = str(home)
    return env


def test_the_readme_first_command_needs_no_extras():
    command = _readme_first_command()
    assert re.search(r"pip install (-e )?\.(\s|$)", command), command  # no [extras]
    assert command.endswith("tether serve"), command


def test_every_subcommand_works_on_a_plain_install(plain_venv, tmp_path):
    tether = str(plain_venv / "bin" / "tether")
    env = _user_env(tmp_path / "home")
    for args in (["--version"], ["--help"], ["serve", "--help"], ["keys", "list"],
                 ["sim", "--help"]):
        result = subprocess.run([tether, *args], env=env, capture_output=True, text=True,
                                check=False, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)


async def test_first_run_serves_with_printed_credentials(plain_venv, tmp_path):
    tether = str(plain_venv / "bin" / "tether")
    home = tmp_path / "home"
    env = _user_env(home)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with serve_process("--port", str(port), env=env, tether=tether) as proc:
        out = b""
        with trio.fail_after(30):
            while b"Keys: " not in out:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"tether serve ended: {out.decode()}"
                out += chunk
        text = out.decode()
        keys_file = home / ".config" / "tether" / "keys.json"
        assert f"First run: created {keys_file}" in text, text
        assert f"Keys: {keys_file}" in text, text
        api_key = re.search(r"API key \(REST API\):\s+(cmd_\S+)", text).group(1)
        agent_token = re.search(r"Agent token \(/v1/agent\):\s+(agt_\S+)", text).group(1)
        async with httpx.AsyncClient(base_url=base, timeout=10,
                                     headers={"Authorization": f"Bearer {api_key}"}) as api:
            assert (await wait_ready(api)).status_code == 200
            async with trio_websocket.open_websocket_url(
                f"ws://127.0.0.1:{port}/v1/agent",
                extra_headers=[(b"authorization", f"Bearer {agent_token}".encode())],
            ) as ws:
                await ws.send_message(wire.encode(wire.Hello(
                    machine_id="mach_xyz789", machine_hostname="prod-server")).decode())
                welcome = wire.decode_server_frame(await ws.get_message())
                assert isinstance(welcome, wire.Welcome), welcome
                # the contract's first example request, with the printed API key
                r = await api.get("/v1/sessions", params={"status": "CONNECTED", "limit": 10})
                assert r.status_code == 200, r.text
                body = r.json()
                assert [s["session_id"] for s in body["data"]] == [welcome.session_id]
                assert body["meta"] == {"total": 1, "limit": 10, "offset": 0, "has_more": False}
            sim = await trio.run_process(
                [tether, "sim", "--url", base, "--agent-token", agent_token, "--agents", "3",
                 "--duration", "2", "--heartbeat-every", "0.5", "--api-key", api_key],
                env=env, capture_stdout=True, capture_stderr=True, check=False)
            assert sim.returncode == 0, sim.stdout.decode() + sim.stderr.decode()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
        assert time.monotonic() - started < 5
