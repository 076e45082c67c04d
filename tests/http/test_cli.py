"""``tether keys create``, first-run keys, env keys, and ``tether serve`` as a real process."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import trio

from tether.cli import load_keys, main
from tether.http import KeyStore, read_keys_file

from ..serving import free_port, serve_process, wait_ready


def test_keys_create(tmp_path, capsys):
    path = tmp_path / "keys.json"
    assert main(["keys", "create", "--workspace", "ws_acme", "--keys", str(path)]) == 0
    api_key = capsys.readouterr().out.strip()
    assert main(["keys", "create", "--workspace", "ws_acme", "--agent", "--keys", str(path)]) == 0
    agent_token = capsys.readouterr().out.strip()
    assert api_key.startswith("cmd_")
    assert agent_token.startswith("agt_")
    text = path.read_text()
    assert api_key not in text and agent_token not in text  # only hashes are stored
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    stored = read_keys_file(path).keys
    assert [(k.kind, k.workspace_id) for k in stored] == [("api", "ws_acme"),
                                                          ("agent", "ws_acme")]
    keys = KeyStore()
    keys.load_file(path)
    assert keys.workspace("api", f"Bearer {api_key}") == "ws_acme"
    assert keys.workspace("agent", f"Bearer {agent_token}") == "ws_acme"
    assert keys.workspace("api", f"Bearer {agent_token}") is None  # separate doors
    assert keys.workspace("agent", f"Bearer {api_key}") is None
    assert keys.workspace("api", f"Bearer {api_key}x") is None


def test_first_run_creates_default_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TETHER_API_KEYS", raising=False)
    monkeypatch.delenv("TETHER_AGENT_TOKENS", raising=False)
    path = tmp_path / "sub" / "keys.json"
    keys = load_keys(path)
    out = capsys.readouterr().out
    assert "ws_default" in out
    api_key = next(w for w in out.split() if w.startswith("cmd_"))
    agent_token = next(w for w in out.split() if w.startswith("agt_"))
    assert keys.workspace("api", f"Bearer {api_key}") == "ws_default"
    assert keys.workspace("agent", f"Bearer {agent_token}") == "ws_default"
    assert f"Keys: {path} (1 API key, 1 agent token)" in out
    # a second run finds them, says which file it uses, and shows no credential
    load_keys(path)
    out = capsys.readouterr().out
    assert out == f"Keys: {path} (1 API key, 1 agent token)\n"


def test_env_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TETHER_API_KEYS", "cmd_one=ws_a, cmd_two=ws_b")
    monkeypatch.setenv("TETHER_AGENT_TOKENS", "agt_one=ws_a")
    keys = load_keys(tmp_path / "keys.json")
    assert not (tmp_path / "keys.json").exists()  # env keys count: no first-run file
    assert capsys.readouterr().out == (f"Keys: {tmp_path / 'keys.json'}, not found: environment"
                                       " keys only (2 API keys, 1 agent token)\n")
    assert keys.workspace("api", "Bearer cmd_two") == "ws_b"
    assert keys.workspace("api", "bearer cmd_one") == "ws_a"
    assert keys.workspace("agent", "Bearer agt_one") == "ws_a"
    monkeypatch.setenv("TETHER_API_KEYS", "agt_wrong=ws_a")
    with pytest.raises(ValueError, match="TETHER_API_KEYS"):
        load_keys(tmp_path / "keys.json")
    monkeypatch.setenv("TETHER_API_KEYS", "cmd_nows")
    with pytest.raises(ValueError, match="key=workspace"):
        load_keys(tmp_path / "keys.json")


def test_serve_refuses_a_negative_gc_threshold(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--gc-young", "-1"])
    assert exited.value.code == 2
    assert "--gc-young: must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_serve_process_and_clean_shutdown(tmp_path, signum):
    port = free_port()
    env = {**os.environ, "TETHER_API_KEYS": "cmd_proc=ws_p", "TETHER_AGENT_TOKENS": ""}
    async with serve_process(
        "--port", str(port), "--grace-period", "7", "--keys", str(tmp_path / "keys.json"),
        "--log-level", "WARNING", "--gc-young", "20000", env=env,
    ) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                     headers={"Authorization": "Bearer cmd_proc"}) as client:
            r = await wait_ready(client)
            health = r.json()
            node = health.pop("node_id")  # the default: hostname, pid and a suffix
            assert f"-{proc.pid}-" in node and r.headers["X-Tether-Node"] == node
            assert health == {"status": "ok", "live_sessions": 0}
            r = await client.post("/v1/sessions", json={"machine_id": "m", "machine_hostname": "h"})
            assert r.status_code == 201
            doc = json.loads((await client.get("/openapi.json")).content)
            assert doc["openapi"] == "3.1.0"
        proc.send_signal(signum)
        with trio.fail_after(15):
            code = await proc.wait()
        assert code == 0
        assert not (tmp_path / "keys.json").exists()
