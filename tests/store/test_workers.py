"""``tether serve --redis URL --workers 2``: one command, one port, two nodes (two processes)
on one real redis-server. Both answer on the port, each names itself, both see each other,
an agent on one is served by the API on the other, and SIGTERM stops them all cleanly."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import httpx
import trio

from ..serving import free_port, open_agent, say_hello, serve_process, wait_ready

if TYPE_CHECKING:
    from pathlib import Path

    from tests.redis_server import RedisServer

API = "cmd_workers_key_0123456789abcdef"
AGENT = "agt_workers_token_0123456789abcdef"


async def test_workers_share_one_port_and_one_state(redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_w", "TETHER_AGENT_TOKENS": f"{AGENT}=ws_w"}
    async with serve_process(
        "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level", "WARNING",
        "--redis", redis.url, "--redis-prefix", "workers:", "--workers", "2",
        "--node-id", "w", "--lease-ttl", "1.5", "--drain-timeout", "5", env=env,
    ) as parent:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {API}"}) as client:
            await wait_ready(client)
            # Both nodes answer on the one port (new connections go to either), and each
            # lists both as live.
            answered: set[str] = set()
            with trio.fail_after(20):
                while answered != {"w-0", "w-1"}:
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as fresh:
                        r = await fresh.get("/healthz")
                    answered.add(r.headers["X-Tether-Node"])
                    if r.json().get("nodes") != ["w-0", "w-1"]:
                        answered.discard(r.headers["X-Tether-Node"])
                        await trio.sleep(0.1)

            # An agent on one node; every node's API lists its session and serves writes.
            async with open_agent(port, AGENT) as ws:
                welcome = await say_hello(ws)
                seen: dict[str, str] = {}
                with trio.fail_after(20):
                    while len(seen) < 2:
                        async with httpx.AsyncClient(
                                base_url=f"http://127.0.0.1:{port}",
                                headers={"Authorization": f"Bearer {API}"}) as fresh:
                            r = await fresh.post(f"/v1/sessions/{welcome.session_id}/clients",
                                                 json={"user_email": "ops@example.com",
                                                       "mode": "observer"})
                        if r.status_code == 201:
                            seen[r.headers["X-Tether-Node"]] = r.json()["data"]["client_id"]
                        else:
                            assert r.status_code == 404, r.text  # not followed there yet
                            await trio.sleep(0.05)
                r = await client.get(f"/v1/sessions/{welcome.session_id}")
                attached = {c["client_id"] for c in r.json()["data"]["attached_clients"]}
                assert set(seen.values()) <= attached

        parent.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await parent.wait() == 0
    with trio.fail_after(5):  # the port is free again: no worker outlived the parent
        while True:
            try:
                await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                break
            await trio.sleep(0.1)
