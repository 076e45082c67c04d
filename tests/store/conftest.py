from __future__ import annotations

from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio

from tests.redis_server import RedisServer, redis_server
from tether.store import Keys

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server


async def lapse(server: RedisServer, prefix: str, node_id: str) -> None:
    """End a node's lease now, as its TTL would once the node stopped renewing it (a crash,
    a pause): other nodes may adopt its sessions from then on."""
    client: coredis.Redis[Any] = coredis.Redis.from_url(server.url)
    async with client:
        await client.delete([Keys(prefix).node(node_id)])


class Receiver:
    """Stands in for the HTTP client: records every post, answers ``status``."""

    def __init__(self) -> None:
        self.status = 503
        self.posted: list[tuple[str, str, str]] = []  # (event type, event id, delivery id)

    def client(self, connections: int) -> Receiver:
        return self

    async def __aenter__(self) -> Receiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def post(self, url, body, headers, addresses=()):
        self.posted.append((headers["X-Cmdop-Event"], headers["webhook-id"],
                            headers["X-Cmdop-Delivery"]))
        await trio.lowlevel.checkpoint()
        return self.status
