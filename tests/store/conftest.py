from __future__ import annotations

from typing import TYPE_CHECKING, Any

import coredis
import pytest

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
