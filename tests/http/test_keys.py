"""``tether keys list | revoke``, ``tether --version`` and ``serve --help``, and a running server
picking up a changed keys file (file watch under MockClock; SIGHUP and revoke on a real process).
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial

import httpx
import msgspec
import pytest
import trio
import trio.testing
import trio_websocket

from tether import __version__, wire
from tether.cli import main
from tether.engine import Engine
from tether.http import (
    KeysFile,
    KeysFileWatcher,
    KeyStore,
    StoredKey,
    create_app,
    create_key,
    read_keys_file,
    serve,
    server_config,
)

from ..serving import free_port, serve_process, wait_ready


def _bearer(key: str) -> str:
    return f"Bearer {key}"


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"tether {__version__}"


def test_serve_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--port PORT port to listen on (default: 8080)",
                  "(default: 127.0.0.1)", "before its session ends (default: 30.0)",
                  "(default: 60.0)", "(default: 300.0)", "(default: 3600.0)",
                  "(default: 86400.0)", "(default: 1048576)", "(default: 65536)",
                  "(default: 100.0)", "(default: 200)", "(default: 5.0)", "(default: 20)",
                  "(default: 10.0)", "(default: 50000)", "(default: INFO)", "(default: 1.0)",
                  "--allow-private-webhooks"):
        assert shown in text, shown


def test_keys_list_shows_fingerprints_never_keys(tmp_path, capsys):
    path = tmp_path / "keys.json"
    api_key = create_key(path, "api", "ws_acme")
    agent_token = create_key(path, "agent", "ws_ops")
    assert main(["keys", "list", "--keys", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["WORKSPACE", "KIND", "FINGERPRINT", "CREATED"]
    stored = read_keys_file(path).keys
    assert [line.split() for line in lines[1:]] == [
        [k.workspace_id, k.kind, k.fingerprint, k.created_at] for k in stored]
    assert [k.kind for k in stored] == ["api", "agent"]
    assert all(len(k.fingerprint) == 12 for k in stored)
    text = "\n".join(lines)
    for secret in (api_key, agent_token):
        assert secret not in text and secret[:7] not in text  # not even the stored hint


def test_keys_list_of_a_missing_file(tmp_path, capsys):
    assert main(["keys", "list", "--keys", str(tmp_path / "none.json")]) == 0
    assert "no keys in" in capsys.readouterr().err


def test_keys_revoke(tmp_path, capsys):
    path = tmp_path / "keys.json"
    keep = create_key(path, "api", "ws_acme")
    gone = create_key(path, "api", "ws_acme")
    fingerprint = read_keys_file(path).keys[1].fingerprint
    assert main(["keys", "revoke", fingerprint[:6], "--keys", str(path)]) == 0
    assert f"revoked api key {fingerprint} of ws_acme" in capsys.readouterr().out
    keys = KeyStore.read(path, environ={})
    assert keys.workspace("api", _bearer(keep)) == "ws_acme"
    assert keys.workspace("api", _bearer(gone)) is None
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("fingerprint", "message"), [
    ("abc", "a fingerprint is 6 to 12 hex digits"),
    ("zzzzzzzz", "a fingerprint is 6 to 12 hex digits"),
    ("000000000000", "no key in"),
])
def test_keys_revoke_refusals_are_one_line(tmp_path, capsys, fingerprint, message):
    path = tmp_path / "keys.json"
    create_key(path, "api", "ws_acme")
    if read_keys_file(path).keys[0].fingerprint == fingerprint:  # pragma: no cover
        pytest.skip("the random key happens to have this fingerprint")
    assert main(["keys", "revoke", fingerprint, "--keys", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tether keys revoke: ") and message in err
    assert err.count("\n") == 1
    assert len(read_keys_file(path).keys) == 1


def test_keys_revoke_an_ambiguous_prefix(tmp_path, capsys):
    path = tmp_path / "keys.json"
    twins = [StoredKey(kind="api", workspace_id="ws", hash="sha256:abcdef" + tail * 58,
                       hint="cmd_xyz", created_at="2026-02-14T10:00:00Z") for tail in "01"]
    path.write_bytes(msgspec.json.encode(KeysFile(keys=twins)))
    assert main(["keys", "revoke", "abcdef", "--keys", str(path)]) == 2
    assert "2 keys in" in capsys.readouterr().err
    assert main(["keys", "revoke", "abcdef1", "--keys", str(path)]) == 0
    assert [k.hash for k in read_keys_file(path).keys] == [twins[0].hash]


async def test_a_running_server_follows_the_keys_file(tmp_path, monkeypatch):
    clock = trio.testing.MockClock(autojump_threshold=0)
    monkeypatch.delenv("TETHER_API_KEYS", raising=False)
    monkeypatch.delenv("TETHER_AGENT_TOKENS", raising=False)
    path = tmp_path / "keys.json"
    first = create_key(path, "api", "ws_acme")

    async def scenario() -> None:
        keys = KeyStore.read(path)
        watcher = KeysFileWatcher(keys, path, interval=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(watcher.run)
            second = create_key(path, "api", "ws_acme")
            assert keys.workspace("api", _bearer(second)) is None  # not yet looked at
            await trio.sleep(1.01)
            assert keys.workspace("api", _bearer(second)) == "ws_acme"
            assert main(["keys", "revoke", read_keys_file(path).keys[0].fingerprint,
                         "--keys", str(path)]) == 0
            await trio.sleep(1.01)
            assert keys.workspace("api", _bearer(first)) is None
            assert keys.workspace("api", _bearer(second)) == "ws_acme"
            path.write_text("{not json")  # a broken file: the keys stay as they were
            await trio.sleep(1.01)
            assert keys.workspace("api", _bearer(second)) == "ws_acme"
            nursery.cancel_scope.cancel()

    await trio.to_thread.run_sync(lambda: trio.run(scenario, clock=clock))


@pytest.mark.parametrize("how", ["file_watch", "sighup"])
async def test_a_revoked_key_stops_working_on_a_real_server(tmp_path, how):
    path = tmp_path / "keys.json"
    key = create_key(path, "api", "ws_acme")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    interval = "1" if how == "file_watch" else "0"  # 0: only SIGHUP reloads
    async with serve_process("--port", str(port), "--keys", str(path), "--keys-reload-interval",
                             interval, "--log-level", "WARNING", env=env) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": _bearer(key)}) as api:
            await wait_ready(api)
            assert (await api.get("/v1/sessions")).status_code == 200
            fingerprint = read_keys_file(path).keys[0].fingerprint
            result = await trio.run_process(
                [sys.executable, "-m", "tether.cli", "keys", "revoke", fingerprint,
                 "--keys", str(path)], capture_stdout=True, capture_stderr=True)
            assert result.returncode == 0, result.stderr
            if how == "sighup":
                proc.send_signal(signal.SIGHUP)
            with trio.fail_after(5):  # "within seconds"
                while (await api.get("/v1/sessions")).status_code != 401:
                    await trio.sleep(0.1)
            assert proc.returncode is None  # SIGHUP reloads; it does not stop the server
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0


async def test_a_revoked_agent_token_closes_its_open_sockets(tmp_path):
    """A socket outlives the token check made when it opened: revoking the token closes it."""
    revoked, kept = "agt_revoked_test_token_0123456789", "agt_kept_test_token_0123456789"
    keys = KeyStore()
    keys.add_key("agent", revoked, "ws_acme")
    keys.add_key("agent", kept, "ws_acme")
    async with Engine() as engine, trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, create_app(engine, keys),
                                            server_config("127.0.0.1", 0),
                                            shutdown_trigger=trio.sleep_forever))
        ws_url = "ws" + binds[0].removeprefix("http") + "/v1/agent"

        def agent(token: str):
            return trio_websocket.open_websocket_url(
                ws_url, extra_headers=[(b"authorization", _bearer(token).encode())])

        async with agent(revoked) as ws, agent(kept) as other:
            for n, socket_ in enumerate((ws, other)):
                await socket_.send_message(wire.encode(wire.Hello(
                    machine_id=f"m{n}", machine_hostname="h")).decode())
                assert isinstance(wire.decode_server_frame(await socket_.get_message()),
                                  wire.Welcome)
            survivor = KeyStore()
            survivor.add_key("agent", kept, "ws_acme")
            keys.replace_with(survivor)  # what a reload does when the token left the file
            with trio.fail_after(5):
                frame = wire.decode_server_frame(await ws.get_message())
                assert isinstance(frame, wire.Error) and frame.code == "token_revoked"
                with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                    await ws.get_message()
            assert closed.value.reason.code == 1008
            with trio.fail_after(5):
                while engine.list_sessions("ws_acme", status="GRACE_PERIOD").meta.total != 1:
                    await trio.sleep(0.01)
            # the other token's agent is untouched
            await other.send_message(wire.encode(wire.Heartbeat()).decode())
            assert engine.list_sessions("ws_acme", status="CONNECTED").meta.total == 1
        with pytest.raises(trio_websocket.HandshakeError):
            async with agent(revoked):
                pass
        nursery.cancel_scope.cancel()
