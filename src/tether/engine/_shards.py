"""A dict split by key hash, so that no single resize stalls the loop at a million entries.

A dict grows by building a table twice the size and moving every entry into it, in one call.
At a million sessions that is ~100 ms here (the new table is fresh memory, touched page by
page), and the engine's per-session maps all reach their thresholds at the same session
count, so one hello paid for three of them: 303 ms, measured in ``benchmarks/engine.py``.
The maps with an entry per session or per machine are sharded: the records by session id and
the index's records by (workspace, machine), which also tells a machine's active session.
Each shard costs the hot path a wrapper call (~0.1 µs).
Split in 16, each part resizes at 1/16 of the size, and the parts cross their thresholds at
moments spread over thousands of insertions (their counts differ by chance), so the same work
is paid in small pieces between the loop's passes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")

_SHARDS = 16  # a power of two: the shard is the hash's low bits
_MISSING = object()


class ShardedDict(Generic[K, V]):
    """The subset of ``dict`` the engine uses, over 16 dicts chosen by ``hash(key)``."""

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: tuple[dict[K, V], ...] = tuple({} for _ in range(_SHARDS))

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & (_SHARDS - 1)][key]

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) & (_SHARDS - 1)][key] = value

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & (_SHARDS - 1)][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & (_SHARDS - 1)]

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        return self._shards[hash(key) & (_SHARDS - 1)].get(key, default)

    @overload
    def pop(self, key: K) -> V: ...
    @overload
    def pop(self, key: K, default: D) -> V | D: ...
    def pop(self, key: K, default: object = _MISSING) -> object:
        shard = self._shards[hash(key) & (_SHARDS - 1)]
        return shard.pop(key) if default is _MISSING else shard.pop(key, default)

    def lookup(self, keys: Iterable[K]) -> list[V]:
        """``[self[k] for k in keys]``, without a method call per key (a page of the index
        scans up to thousands)."""
        shards, mask = self._shards, _SHARDS - 1
        return [shards[hash(key) & mask][key] for key in keys]

    def values(self) -> Iterator[V]:
        for shard in self._shards:
            yield from shard.values()

    def items(self) -> Iterator[tuple[K, V]]:
        for shard in self._shards:
            yield from shard.items()
