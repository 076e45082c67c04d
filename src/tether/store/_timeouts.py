"""How long a round trip to Redis may take before Redis counts as away."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Iterator


class RedisTimeout(ConnectionError):
    """Redis did not answer a round trip in time (down, paused, or overloaded)."""


@contextmanager
def answer_within(seconds: float) -> Iterator[None]:
    """Raise :class:`RedisTimeout` if the block takes longer than ``seconds``."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise RedisTimeout(f"Redis did not answer within {seconds:g} s") from None
