"""Engine configuration: every duration and bound, with the defaults CMDOP documents."""

from __future__ import annotations

import msgspec

from ._errors import InvalidParameter


class EngineConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Durations are seconds of the trio clock; bounds are counts.

    ``heartbeat_interval`` is what agents are told to use; ``heartbeat_timeout`` is how long a
    CONNECTED session may stay silent before it enters GRACE_PERIOD.
    """

    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    background_timeout: float = 3600.0
    grace_period: float = 30.0
    pending_timeout: float = 300.0
    #: How long a final (DISCONNECTED / ERROR) session stays queryable before it is purged.
    retention: float = 24 * 3600.0
    #: Per-session command history cap; the oldest entries are dropped first.
    history_cap: int = 10_000
    #: The retained event log: at most this many events, none older than ``event_retention``.
    event_log_max: int = 1_000_000
    event_retention: float = 24 * 3600.0
    #: Freeze the collected heap whenever its old generation holds more objects than this, so
    #: full garbage collections never walk every session (``_gc.py``); 0: leave it alone.
    gc_freeze_limit: int = 100_000
    #: Each session keeps its last this many bytes of output (through its grace period, until
    #: it is purged); all sessions together at most ``output_memory_bytes``, the largest
    #: buffers giving up their oldest bytes first.
    output_buffer_bytes: int = 1024 * 1024
    output_memory_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval",
            "heartbeat_timeout",
            "background_timeout",
            "grace_period",
            "pending_timeout",
        ):
            if not getattr(self, name) > 0:
                raise InvalidParameter(name, "must be a positive number of seconds")
        for name in ("retention", "event_retention"):
            if not getattr(self, name) >= 0:
                raise InvalidParameter(name, "must be zero or a positive number of seconds")
        for name in ("history_cap", "event_log_max", "output_buffer_bytes",
                     "output_memory_bytes"):
            if getattr(self, name) < 1:
                raise InvalidParameter(name, "must be at least 1")
        if self.gc_freeze_limit < 0:
            raise InvalidParameter("gc_freeze_limit", "must be 0 or more")
