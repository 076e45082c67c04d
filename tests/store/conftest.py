from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.redis_server import RedisServer, redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis") as server:
        yield server
