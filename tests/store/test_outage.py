"""Redis paused with SIGSTOP under a real ``tether serve --redis``: agents stay connected and
heartbeating, reads are served, writes are answered 503 ``unavailable`` (never a 500, never a
silent success), ``/healthz`` says ``degraded``; when Redis answers again everything catches
up; past ``--redis-outage-budget`` the node exits non-zero."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import httpx
import trio

from tether import wire

from ..serving import free_port, open_agent, say_hello, serve_process, wait_ready

if TYPE_CHECKING:
    from pathlib import Path

    from tests.redis_server import RedisServer

API = "cmd_redis_outage_key_0123456789"
AGENT = "agt_redis_outage_token_0123456789"


async def test_a_paused_redis_degrades_the_node_and_the_budget_ends_it(
        redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_o", "TETHER_AGENT_TOKENS": f"{AGENT}=ws_o"}
    async with serve_process(
        "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level", "ERROR",
        "--redis", redis.url, "--redis-prefix", "outage:", "--redis-outage-budget", "12",
        env=env,
    ) as proc, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 headers={"Authorization": f"Bearer {API}"}) as api:
        await wait_ready(api)
        async with open_agent(port, AGENT) as ws:
            welcome = await say_hello(ws)

            redis.pause()
            try:
                # The first write finds Redis silent: answered 503 once the commit times out.
                r = await api.post("/v1/sessions", json={"machine_id": "m2",
                                                         "machine_hostname": "h2"})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                # From then on writes are refused at once, before anything changes.
                with trio.fail_after(1):
                    r = await api.post("/v1/sessions", json={"machine_id": "m3",
                                                             "machine_hostname": "h3"})
                assert (r.status_code, r.json()["error"]["code"]) == (503, "unavailable")
                health = (await api.get("/healthz")).json()
                assert health["status"] == "degraded" and "Redis" in health["reason"]
                # The agent stays connected and heartbeats; reads are served.
                await ws.send_message(wire.encode(wire.Heartbeat()).decode())
                r = await api.get(f"/v1/sessions/{welcome.session_id}")
                assert (r.status_code, r.json()["data"]["status"]) == (200, "CONNECTED")
            finally:
                redis.resume()
            with trio.fail_after(10):  # it catches up
                while (await api.get("/healthz")).json()["status"] != "ok":
                    await trio.sleep(0.1)
            r = await api.post("/v1/sessions", json={"machine_id": "m3", "machine_hostname": "h3"})
            assert r.status_code == 201, r.text

            redis.pause()  # and this time for longer than the budget
            try:
                with trio.fail_after(30):
                    code = await proc.wait()
            finally:
                redis.resume()
    assert code == 1
    assert b"budget" in await proc.stderr.receive_some(65536)
