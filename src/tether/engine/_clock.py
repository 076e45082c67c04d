"""Wall-clock timestamps derived from trio's clock.

The engine reads time only from ``trio.current_time()``; a :class:`WallClock` maps that onto
wall time (epoch at start + trio time elapsed), so under ``trio.testing.MockClock`` the
timestamps are as deterministic as the lifecycle.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import trio


class WallClock:
    """Maps trio time to wall time and renders RFC 3339 UTC timestamps (``...Z``).

    ``epoch`` is the wall time (Unix seconds) that corresponds to trio time ``trio_zero``. Made
    inside ``trio.run`` with no arguments, it anchors at the current instant of both clocks.
    """

    __slots__ = ("_cache", "epoch", "trio_zero")

    def __init__(self, epoch: float | None = None, trio_zero: float | None = None) -> None:
        self.epoch = time.time() if epoch is None else epoch
        self.trio_zero = trio.current_time() if trio_zero is None else trio_zero
        self._cache: dict[int, str] = {}

    def wall(self, trio_time: float) -> float:
        """Unix seconds of a trio-clock instant."""
        return self.epoch + (trio_time - self.trio_zero)

    def rfc3339(self, trio_time: float) -> str:
        """The instant as ``YYYY-MM-DDTHH:MM:SSZ``, whole seconds, as the API shows them."""
        second = int(self.wall(trio_time) // 1)
        text = self._cache.get(second)
        if text is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._cache[second] = text
        return text

    @staticmethod
    def parse(text: str) -> float:
        """Unix seconds of an :meth:`rfc3339` text."""
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()

    def maybe(self, trio_time: float | None) -> str | None:
        """:meth:`rfc3339`, passing ``None`` through."""
        return None if trio_time is None else self.rfc3339(trio_time)

    def trio_time(self, wall: float) -> float:
        """The trio-clock instant of a wall time (Unix seconds): the inverse of :meth:`wall`."""
        return self.trio_zero + (wall - self.epoch)

    def wall_ms(self, trio_time: float) -> int:
        """Unix milliseconds of a trio-clock instant."""
        return int(self.wall(trio_time) * 1000)
