"""A real ``tether serve --redis`` process on a real ``redis-server``: killed with SIGKILL and
started again with the same flags (a new node id), it still lists every session, adopts them
once the dead node's lease lapses (``--lease-ttl``), and its agent resumes the same session;
stopped with SIGTERM, it hands its sessions over (close 1012, ``node_draining``) and releases
its lease, so the next node carries them on at once."""

from __future__ import annotations

import os
import signal
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import trio
import trio_websocket

from ..serving import free_port, open_agent, say_hello, serve_process, wait_ready

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.redis_server import RedisServer

API = "cmd_redis_restart_key_0123456789"
AGENT = "agt_redis_restart_token_0123456789"


@asynccontextmanager
async def node(redis: RedisServer, tmp_path: Path, port: int) -> AsyncIterator[trio.Process]:
    env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_r", "TETHER_AGENT_TOKENS": f"{AGENT}=ws_r"}
    async with serve_process(
        "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level", "WARNING",
        "--redis", redis.url, "--redis-prefix", "restart:", "--drain-timeout", "5",
        "--lease-ttl", "1", env=env,
    ) as proc:
        yield proc


def api(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                             headers={"Authorization": f"Bearer {API}"})


async def sessions(client: httpx.AsyncClient) -> dict[str, dict]:
    r = await client.get("/v1/sessions", params={"limit": 100})
    assert r.status_code == 200, r.text
    return {s["session_id"]: s for s in r.json()["data"]}


async def test_kill_9_then_restart_keeps_every_session_and_the_agent_resumes_it(
        redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    async with node(redis, tmp_path, port) as first, api(port) as client:
        await wait_ready(client)
        async with open_agent(port, AGENT) as ws:
            welcome = await say_hello(ws)
            r = await client.post("/v1/sessions", json={"machine_id": "m2",
                                                        "machine_hostname": "h2"})
            assert r.status_code == 201, r.text
            pending = r.json()["data"]["session_id"]
            first.kill()  # SIGKILL: nothing is flushed on the way out
            await first.wait()
    async with node(redis, tmp_path, port) as second, api(port) as client:
        await wait_ready(client)
        listed = await sessions(client)
        assert set(listed) == {welcome.session_id, pending}
        assert listed[pending]["status"] == "PENDING"
        with trio.fail_after(5):  # the dead node's lease lapses within a second of the kill
            while True:
                detail = (await client.get(f"/v1/sessions/{welcome.session_id}")).json()["data"]
                if detail["status"] != "CONNECTED":
                    break
                await trio.sleep(0.05)
        assert (detail["status"], detail["reason"]) == ("GRACE_PERIOD", "node_lost")
        async with open_agent(port, AGENT) as ws:
            again = await say_hello(ws, token=welcome.resume_token)
            assert (again.session_id, again.resumed) == (welcome.session_id, True)
            listed = await sessions(client)
            assert listed[welcome.session_id]["status"] == "CONNECTED"

            # SIGTERM: the agent is told to come back (1012), the session is handed over.
            second.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                try:
                    while True:
                        await ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    assert (closed.reason.code, closed.reason.reason) == (1012, "node_draining")
        with trio.fail_after(10):
            assert await second.wait() == 0
    async with node(redis, tmp_path, port), api(port) as client:
        await wait_ready(client)
        detail = (await client.get(f"/v1/sessions/{welcome.session_id}")).json()["data"]
        assert (detail["status"], detail["reason"]) == ("GRACE_PERIOD", "node_draining")
        async with open_agent(port, AGENT) as ws:
            third = await say_hello(ws, token=again.resume_token)
            assert (third.session_id, third.resumed) == (welcome.session_id, True)


async def test_a_node_stopping_while_redis_is_away_still_exits_within_its_deadline(
        redis: RedisServer, tmp_path: Path) -> None:
    """Redis stops answering under 300 agents and the node is told to stop: what it cannot
    write cannot hold it past the drain deadline and its margin (it used to wait for Redis
    for ever, a second signal included)."""
    port = free_port()
    async with node(redis, tmp_path, port) as proc, api(port) as client, \
            trio.open_nursery() as agents:
        await wait_ready(client)

        async def agent(i: int, task_status: trio.TaskStatus[None]) -> None:
            try:
                async with open_agent(port, AGENT) as ws:
                    await say_hello(ws, machine_id=f"m{i}")
                    task_status.started()
                    while True:
                        await ws.get_message()
            except trio_websocket.ConnectionClosed:
                pass

        for i in range(300):
            await agents.start(agent, i)
        redis.pause()
        try:
            await trio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)  # drain timeout 5 s, then the 5 s margin
            with trio.fail_after(20):
                await proc.wait()
        finally:
            redis.resume()
        agents.cancel_scope.cancel()
