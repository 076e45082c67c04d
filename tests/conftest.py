"""Fixtures for every test directory: one real ``redis-server`` per test session, for the
tests that run the same checks on the in-memory engine and on Redis-backed state (each of
them uses its own key prefix, so they never see each other's keys)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest

from tests.redis_server import RedisServer, redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


def fresh_prefix(kind: str) -> str:
    """A key prefix no other test of this session uses."""
    return f"{kind}{next(_prefixes)}:"
