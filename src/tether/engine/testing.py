"""Seams for tests, simulations and benchmarks, so none of them reads a private engine name.

- Transports to hand :meth:`Engine.agent_hello`: :class:`NullTransport` (ignores everything),
  :class:`RecordingTransport` (remembers what the engine told it) and
  :class:`FailingTransport` (its agent is unreachable: every send raises).
- :func:`snapshot`: what the engine holds, for checking invariants (one active session per
  machine, an actor per live session and none for an ended one, which sessions hold an
  agent's link); :func:`session_facts` for one session, with its exact trio times.
- :func:`heap_objects`: how many session records, actors and links exist in the whole heap
  (after a full collection), to prove ended sessions leave nothing behind.

Reading these costs O(sessions); they are for checks, not for a hot path.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._actor import SessionActor
from ._link import AgentLink, JournaledLink
from ._record import SessionRecord

if TYPE_CHECKING:
    from ._engine import Engine
    from ._models import OperatorFrame, RunCommand, Status

__all__ = [
    "FailingTransport",
    "NullTransport",
    "RecordingTransport",
    "SessionFacts",
    "Snapshot",
    "TransportFailed",
    "heap_objects",
    "session_facts",
    "snapshot",
    "total_version",
]


class NullTransport:
    """An agent transport that ignores what the engine tells it."""

    __slots__ = ()

    def send_run_command(self, command: RunCommand) -> None:
        pass

    def send_operator(self, frame: OperatorFrame) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


class RecordingTransport:
    """An agent transport that remembers what the engine told it."""

    __slots__ = ("closed", "closes", "commands", "operator_frames")

    def __init__(self) -> None:
        self.commands: list[RunCommand] = []
        self.operator_frames: list[OperatorFrame] = []  # input, resize, signal, in order
        self.closed: str | None = None  # the reason of the first close
        self.closes = 0  # how many times the engine closed it (once, if all is well)

    @property
    def open(self) -> bool:
        return self.closed is None

    def send_run_command(self, command: RunCommand) -> None:
        self.commands.append(command)

    def send_operator(self, frame: OperatorFrame) -> None:
        self.operator_frames.append(frame)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.closes += 1


class TransportFailed(OSError):
    """What a :class:`FailingTransport` raises: its agent cannot be reached."""


class FailingTransport(RecordingTransport):
    """An agent transport whose agent is unreachable: sending raises :class:`TransportFailed`
    (and so does closing, with ``fail_close``). The engine must stay consistent anyway."""

    __slots__ = ("fail_close",)

    def __init__(self, *, fail_close: bool = False) -> None:
        super().__init__()
        self.fail_close = fail_close

    def send_run_command(self, command: RunCommand) -> None:
        raise TransportFailed("the agent cannot be reached")

    def send_operator(self, frame: OperatorFrame) -> None:
        raise TransportFailed("the agent cannot be reached")

    def close(self, reason: str) -> None:
        super().close(reason)
        if self.fail_close:
            raise TransportFailed("the agent cannot be reached")


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the engine holds for one retained session (times are trio times)."""

    session_id: str
    workspace_id: str
    machine_id: str
    status: Status
    version: int
    created_at: float
    status_since: float
    last_heartbeat: float | None
    ended_at: float | None
    has_actor: bool  # its actor is running (a live session's, never an ended one's)
    has_link: bool  # an agent's transport carries it
    has_resume_secret: bool  # its resume token would still be accepted


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every retained session, the machine -> active session map, and the actor tasks."""

    sessions: dict[str, SessionFacts]
    active: dict[tuple[str, str], str]  # (workspace, machine) -> session id
    actor_tasks: int  # actor tasks running in the engine's nursery

    @property
    def links_held(self) -> int:
        return sum(facts.has_link for facts in self.sessions.values())


def _facts(rec: SessionRecord) -> SessionFacts:
    return SessionFacts(
        session_id=rec.session_id,
        workspace_id=rec.workspace_id,
        machine_id=rec.machine_id,
        status=rec.status,
        version=rec.version,
        created_at=rec.created_at,
        status_since=rec.status_since,
        last_heartbeat=rec.last_heartbeat,
        ended_at=rec.ended_at,
        has_actor=rec.actor is not None,
        has_link=rec.link is not None,
        has_resume_secret=rec.resume_hash is not None,
    )


def session_facts(engine: Engine, session_id: str) -> SessionFacts | None:
    """One retained session's facts (``None`` once it has been purged), in O(1)."""
    rec = engine._table.records.get(session_id)
    return None if rec is None else _facts(rec)


def snapshot(engine: Engine) -> Snapshot:
    """What ``engine`` holds now."""
    table = engine._table
    return Snapshot(
        sessions={sid: _facts(rec) for sid, rec in table.records.items()},
        active={(rec.workspace_id, rec.machine_id): rec.session_id
                for rec in table.live_records()},
        actor_tasks=engine.actors_running,
    )


def total_version(engine: Engine) -> int:
    """The sum of every retained session's ``version``: it grows with every change a session
    sees (heartbeats included), so a load test can count the frames the engine took in."""
    return sum(rec.version for rec in engine._table.records.values())


def heap_objects() -> dict[str, int]:
    """Session records, actors and agent links alive anywhere in the heap, after a full
    garbage collection (so only what something still refers to is counted). The heap is
    thawed first (``gc.unfreeze()``): frozen objects are invisible to the collector."""
    gc.unfreeze()
    gc.collect()
    alive = {SessionRecord: 0, SessionActor: 0, AgentLink: 0}
    kinds = {kind: kind for kind in alive} | {JournaledLink: AgentLink}  # a store's links too
    for obj in gc.get_objects():
        kind = kinds.get(type(obj))
        if kind is not None:
            alive[kind] += 1
    return {kind.__name__: count for kind, count in alive.items()}
