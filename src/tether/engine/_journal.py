"""The engine's side of a session store: what changed since the last write.

With a store (``Engine(config, store=...)``), every change a session's actor makes (a
transition, an attach or detach, a command, an event) marks the session changed; before the
actor answers anyone, it waits for :meth:`Journal.commit`. The writer (a
:class:`~tether.engine._commit.GroupCommit`) takes everything marked so far as one
:class:`~tether.engine._persist.WriteBatch` (snapshots taken at that moment, so a session that
changed ten times is written once) and writes it; every commit waiting for a mark in it
returns when it is durable. Events become visible to subscribers (the feed, SSE, webhooks)
only once written: they enter the log when read back from the store, numbered by it.

Heartbeats and telemetry only mark the session "beaten"; they go out with the next batch, and
the writer writes at least every ``flush_interval``, so the hot path never waits on the store.
Output marks the session "written" and asks for a batch soon (nobody waits for it either): the
bytes since the last batch go out with it, so readers on other nodes see them within a round
trip or two, and a node that dies loses only what its agents resend (a welcome's
``output_offset`` is what the store holds).
Retries, outages and commit timeouts are the group commit's (see ``_commit.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._commit import GroupCommit
from ._persist import HistoryAppend, OutputAppend, WriteBatch, heartbeat, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._clock import WallClock
    from ._events import EventLog
    from ._persist import Displaced, SessionStore
    from ._record import SessionRecord


class Journal:
    """Marks of what changed; :meth:`run` writes them."""

    def __init__(self, store: SessionStore, clock: WallClock, events: EventLog,
                 history_cap: int, flush_interval: float = 1.0,
                 commit_timeout: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.events = events
        self.history_cap = history_cap
        self._changed: dict[str, SessionRecord] = {}
        self._beaten: dict[str, SessionRecord] = {}
        self._purged: list[tuple[str, str]] = []
        self._written: dict[str, SessionRecord] = {}  # sessions with output to write
        self._output_saved: dict[str, int] = {}  # session id -> its output's stored end
        #: Called with the live sessions a write found displaced from their machine.
        self.on_displaced: Callable[[list[Displaced]], None] = lambda found: None
        self.writer: GroupCommit[WriteBatch] = GroupCommit(
            self._take, self._write, what="session store",
            idle_interval=flush_interval, commit_timeout=commit_timeout,
        )
        self.commit = self.writer.commit
        self.flush = self.writer.flush
        self.settle = self.writer.settle
        self.check_available = self.writer.check_available
        self.run = self.writer.run
        self.lost = store.lost

    @property
    def outage_since(self) -> float | None:
        return self.writer.outage_since

    @property
    def last_error(self) -> str | None:
        return self.writer.last_error

    # -- marks (synchronous: the actor's turn continues) -----------------------------------

    def changed(self, rec: SessionRecord) -> None:
        self._changed[rec.session_id] = rec
        self.writer.mark()

    def beaten(self, rec: SessionRecord) -> None:
        """A heartbeat or telemetry: written within ``flush_interval``, nobody waits."""
        self._beaten[rec.session_id] = rec

    def written(self, rec: SessionRecord) -> None:
        """Output was appended: written with the next batch, asked for now; nobody waits."""
        self._written[rec.session_id] = rec
        self.writer.mark()

    def output_stored(self, rec: SessionRecord, next_offset: int) -> None:
        """The store holds ``rec``'s output up to ``next_offset`` (the session was loaded,
        taken over or adopted): what is appended from there on is what to write."""
        self._output_saved[rec.session_id] = next_offset

    def purged(self, rec: SessionRecord) -> None:
        self._changed.pop(rec.session_id, None)
        self._beaten.pop(rec.session_id, None)
        self._written.pop(rec.session_id, None)
        self._output_saved.pop(rec.session_id, None)
        self._purged.append((rec.workspace_id, rec.session_id))
        self.writer.mark()

    # -- batches ---------------------------------------------------------------------------

    def _take(self) -> WriteBatch:
        """Everything marked, as one batch."""
        clock = self.clock
        changed, self._changed = self._changed, {}
        beaten, self._beaten = self._beaten, {}
        purged, self._purged = self._purged, []
        written, self._written = self._written, {}
        sessions = []
        history = []
        for rec in changed.values():
            beaten.pop(rec.session_id, None)  # the snapshot has its heartbeat
            sessions.append(snapshot(rec, clock))
            total = rec.history_total
            if total > rec.history_saved and rec.history is not None:
                first = max(rec.history_saved, rec.history_first)
                entries = list(rec.history)[first - rec.history_first :]
                history.append(HistoryAppend(rec.workspace_id, rec.session_id, first, entries,
                                             self.history_cap))
                rec.history_saved = total
        return WriteBatch(
            sessions=sessions,
            history=history,
            heartbeats=[heartbeat(rec, clock) for rec in beaten.values()],
            events=self.events.take_pending(),
            purged=purged,
            output=self._output(written),
        )

    def _output(self, written: dict[str, SessionRecord]) -> list[OutputAppend]:
        """The output appended to ``written`` since their last batch (bytes the process
        budget shed before they were taken are not written: the store's stream has a gap)."""
        saved = self._output_saved
        appends = []
        for session_id, rec in written.items():
            buffer = rec.output
            if buffer is None:
                continue
            start = max(saved.get(session_id, 0), buffer.first_offset)
            if start < buffer.next_offset:
                appends.append(OutputAppend(rec.workspace_id, session_id,
                                            buffer.chunks_from(start), buffer.limit))
                saved[session_id] = buffer.next_offset
        return appends

    async def _write(self, batch: WriteBatch) -> None:
        displaced = await self.store.write(batch)
        if displaced:
            self.on_displaced(displaced)
        if batch.events:
            # Read the log back: this node's events enter it with the offsets the store gave
            # them, in the store's order, before anyone is answered.
            self.events.place_new(await self.store.new_events())
