"""The session actor: one trio task per live session, running its lifecycle requests in turn.

One actor task per live session. Lifecycle inputs reach it through its inbox and run one at a
time, so a session's transitions are serialised; heartbeats and telemetry never come here.
The actor parks (no cancel scope, so waking it is cheap) until a message arrives or the
timekeeper says its deadline is due, and it ends when its session reaches a final status.

The inbox is a plain list plus a parked-task slot rather than a trio memory channel: measured
here, a channel pair costs ~2.4 KB per session, a third of the per-session memory budget.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import outcome
import trio

from ._errors import (
    EngineClosed,
    SessionMoved,
    SessionNotActive,
    StoreUnavailable,
    TetherError,
)
from ._lifecycle import Input, deadline, timeout

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import EngineConfig
    from ._journal import Journal
    from ._pacer import Pacer
    from ._record import SessionRecord
    from ._timers import Timekeeper

log = logging.getLogger("tether.engine")

T = TypeVar("T")


class ActorHost(Protocol):
    """What an actor needs of the engine: its timings, the timekeeper, and what to do when
    its session's deadline comes."""

    @property
    def config(self) -> EngineConfig: ...

    @property
    def timekeeper(self) -> Timekeeper: ...

    @property
    def pacer(self) -> Pacer: ...

    @property
    def journal(self) -> Journal | None:
        """With a store: where changes are marked, and committed before anyone is answered."""

    def expire(self, rec: SessionRecord, inp: Input) -> None:
        """``rec``'s deadline has passed: apply ``inp`` (its status's timeout)."""


class _Call:
    """One message: a handler to run in the actor, and who waits for its outcome."""

    __slots__ = ("args", "handler", "task")

    def __init__(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.handler = handler
        self.args = args
        self.task: trio.lowlevel.Task | None = None

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        # The caller was cancelled: the message may still run, but nobody waits for it.
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def finish(self, result: outcome.Outcome[Any]) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task, result)


class SessionActor:
    """Owns one session's lifecycle while it is live."""

    __slots__ = ("_closed", "_due", "_inbox", "_parked", "_queued", "_stopping", "_timer_at",
                 "host", "record")

    def __init__(self, host: ActorHost, record: SessionRecord) -> None:
        self.host = host
        self.record = record
        self._inbox: list[_Call] | None = None
        self._parked: trio.lowlevel.Task | None = None
        self._timer_at: float | None = None
        self._due = False
        self._closed = False
        self._queued = False  # in the pacer's queue, to be resumed
        self._stopping = False

    # -- from other tasks ------------------------------------------------------------------

    def post(self, handler: Callable[..., object], *args: Any) -> None:
        """Queue ``handler(*args)`` to run in the actor; nobody waits for it."""
        self._enqueue(_Call(handler, args))

    async def call(self, handler: Callable[..., T], *args: Any) -> T:
        """Run ``handler(*args)`` in the actor and return (or raise) what it does.

        With a store that is away, :class:`StoreUnavailable` is raised here, before anything
        changes: the change could not be made durable (``post`` is the engine's own, and
        never refused)."""
        journal = self.host.journal
        if journal is not None:
            journal.check_available()
        message = _Call(handler, args)
        self._enqueue(message)
        message.task = trio.lowlevel.current_task()
        result: T = await trio.lowlevel.wait_task_rescheduled(message.abort)
        return result

    def _enqueue(self, message: _Call) -> None:
        if self._closed:
            status = self.record.status
            raise SessionNotActive(status.value, "an active") if status.final else EngineClosed()
        if self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)
        self._wake()

    def stop(self) -> None:
        """Return after the messages queued so far, leaving the session as it is (a node
        handing its sessions over: another run of the engine carries them on)."""
        self.post(self._stop)

    def _stop(self) -> None:
        self._stopping = True

    def on_timer(self, when: float, now: float) -> None:
        """The timekeeper's call at ``when``: wake the actor only if its deadline really passed."""
        if when != self._timer_at or self._closed:
            return  # superseded by an earlier entry, or the session ended
        self._timer_at = None
        rec = self.record
        due = deadline(rec.status, rec.status_since, rec.last_heartbeat, self.host.config)
        if due is None:
            return
        if due > now:  # heartbeats moved it: sleep on
            self._arm(due)
        else:
            self._due = True
            self._wake(deadline=True)

    # -- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        rec = self.record
        try:
            self._arm_for_status()
            while True:
                if self._inbox is None and not self._due:
                    self._parked = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                inbox, self._inbox = self._inbox, None
                if inbox is not None:
                    journal = self.host.journal
                    done = []
                    for message in inbox:
                        # After a final transition the rest still run: each fails with
                        # session_not_active, which its caller gets.
                        result: outcome.Outcome[Any]
                        try:
                            result = outcome.Value(message.handler(*message.args))
                        except TetherError as exc:
                            result = outcome.Error(exc)
                        except Exception as exc:  # a bug: the caller gets it, the log says it
                            if message.task is None:
                                log.exception("session %s: unhandled error", rec.session_id)
                            result = outcome.Error(exc)
                        if journal is None or message.task is None:
                            # Nobody waits for a posted message (a drain's hand-over, a lost
                            # transport): it is written with the next batch all the same.
                            message.finish(result)
                        else:
                            done.append((message, result))
                    if done:
                        assert journal is not None
                        try:
                            await journal.commit()  # durable before anyone hears of it
                        except StoreUnavailable as exc:
                            # Made, kept, and written once the store answers: say so.
                            kept = StoreUnavailable(exc.details.get("reason"), applied=True)
                            done = [(message, outcome.Error(kept)) for message, _ in done]
                        else:
                            if journal.lost(rec.session_id):
                                # Refused by the store: another node runs it now, and this
                                # turn's changes are not made. Said so, not answered as done.
                                moved = SessionMoved(rec.session_id)
                                done = [(message, outcome.Error(moved)) for message, _ in done]
                        for message, result in done:
                            message.finish(result)
                if self._stopping:
                    return
                if self._due and not rec.status.final:
                    self._due = False
                    self._check_deadline()
                if rec.status.final:
                    return
                self._arm_for_status()
        finally:
            self._close()

    def _close(self) -> None:
        """End the inbox and fail whatever is still in it, with no checkpoint in between."""
        self._closed = True
        self._parked = None
        rec = self.record
        if rec.actor is self:
            rec.actor = None
        inbox, self._inbox = self._inbox, None
        if inbox:
            error: Exception = (
                SessionNotActive(rec.status.value, "an active")
                if rec.status.final
                else EngineClosed()
            )
            for message in inbox:
                message.finish(outcome.Error(error))

    def _abort_park(self, _: Any) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake(self, *, deadline: bool = False) -> None:
        # Through the pacer: a mass wake-up is spread over passes of the run loop.
        if self._parked is not None and not self._queued:
            self._queued = True
            self.host.pacer.wake(self, deadline=deadline)

    def resume(self) -> None:
        """The pacer's turn for this actor: reschedule it if it is still parked."""
        self._queued = False
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    # -- deadlines -------------------------------------------------------------------------

    def _arm_for_status(self) -> None:
        rec = self.record
        due = deadline(rec.status, rec.status_since, rec.last_heartbeat, self.host.config)
        if due is not None:
            self._arm(due)

    def _arm(self, due: float) -> None:
        # Keep one live heap entry, the earliest; a later deadline is found when it fires.
        if self._timer_at is None or due < self._timer_at:
            self._timer_at = due
            self.host.timekeeper.schedule(due, self)

    def _check_deadline(self) -> None:
        rec = self.record
        due = deadline(rec.status, rec.status_since, rec.last_heartbeat, self.host.config)
        if due is not None and due <= trio.current_time():
            inp = timeout(rec.status)
            assert inp is not None
            self.host.expire(rec, inp)

