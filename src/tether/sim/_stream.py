"""People watching sessions through attach streams, as a pure model: no trio, no sockets.

A :class:`StreamClient` is one person's view of one session's output, across every stream
they open on it: the first from wherever the server starts them, each re-attach with
``offset=`` the end of the last ``output`` received. It keeps a SHA-256 of the bytes it received
and, beside it, a SHA-256 of the same byte range of what the agent wrote (its
:class:`~tether.sim._output.OutputLog`), fed as the bytes arrive; the self-check is that the two
agree (:meth:`StreamClient.verdict`). A byte missing, repeated, reordered or changed anywhere
makes them differ.

A ``gap`` frame says bytes asked for are no longer retained: that is honest only if they are
older than the last ``retention`` bytes the agent had written (the server's per-session buffer,
``--output-buffer-bytes``, 1 MiB by default); any other gap is a problem. Either way the
comparison goes on from after the gap (what came before it is compared then and there).

Operators stream on the client they attached over the REST API (``client_id=``, so a stream's
close does not detach them) and re-attach once per visit, before their first command
(:attr:`~tether.sim._operator.OperatorRun.reattach`). Observers (:class:`ObserverRun`) attach
by the stream itself (mode observer, no ``client_id``: closing it detaches them), drop it once,
come back with their offset as a new client, and leave.
"""

from __future__ import annotations

import enum
import hashlib
from typing import TYPE_CHECKING

from ._agent import INF

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._agent import AgentRun, SessionExpect
    from ._behaviour import ObserverVisit
    from ._output import OutputLog

#: What the server keeps of each session's output, unless told otherwise.
DEFAULT_RETENTION = 1024 * 1024


class StreamClient:
    """One person's streams on one session, and the check of what they received."""

    __slots__ = ("_expected", "_fed", "_received", "_start", "bytes", "client_id", "gaps",
                 "log", "mode", "open", "position", "problems", "reattaches", "retention",
                 "session", "streams", "user_email")

    def __init__(self, session: SessionExpect, log: OutputLog, mode: str, user_email: str,
                 *, client_id: str | None = None, retention: int = DEFAULT_RETENTION) -> None:
        self.session = session
        self.log = log
        self.mode = mode
        self.user_email = user_email
        self.client_id = client_id
        self.retention = retention
        self.open = False
        self.streams = 0  # streams opened
        self.reattaches = 0
        self.gaps = 0
        self.bytes = 0  # output bytes received
        self.position: int | None = None  # the offset the next output must start at
        self.problems: list[str] = []
        self._start = 0  # the compared range starts here ...
        self._fed = 0  # ... and the agent's bytes up to here are in _expected
        self._received = hashlib.sha256()
        self._expected = hashlib.sha256()

    @property
    def offset(self) -> int | None:
        """What a re-attach asks for: the end of the last output received."""
        return self.position

    # -- what the stream said ----------------------------------------------------------------

    def attached(self, client_id: str, offset: int) -> None:
        """``attached``: as ``client_id``, output follows from ``offset``."""
        self.client_id = client_id
        self.open = True
        self.streams += 1
        if self.streams > 1:
            self.reattaches += 1
        if self.position is None:
            self.position = self._start = self._fed = offset

    def gap(self, start: int, end: int) -> None:
        """``gap``: bytes ``start`` to ``end`` are no longer retained."""
        self.gaps += 1
        written = self.log.written
        if written - start <= self.retention:
            self._problem(f"gap {start}..{end} within the last {self.retention} bytes the "
                          f"agent wrote (it had written {written})")
        self._compare()
        self.position = self._start = self._fed = end
        self._received = hashlib.sha256()
        self._expected = hashlib.sha256()

    def output(self, offset: int, data: bytes) -> None:
        """``output``: ``data`` from ``offset``."""
        if self.position is not None and offset != self.position:
            self._problem(f"output at {offset}, expected {self.position}")
        self._received.update(data)
        self.bytes += len(data)
        end = self._fed + len(data)
        wrote = self.log.range(self._fed, end)
        if wrote is None:
            self._problem(f"bytes {self._fed}..{end} received: the agent wrote "
                          f"{self.log.written} and keeps from {self.log.kept_from}")
        else:
            self._expected.update(wrote)
        self._fed = end
        self.position = offset + len(data)

    def closed(self) -> None:
        self.open = False

    # -- the check ---------------------------------------------------------------------------

    def verdict(self) -> list[str]:
        """Every way what this client received differs from what the agent wrote."""
        self._compare()
        return self.problems

    def _compare(self) -> None:
        received, expected = self._received.hexdigest(), self._expected.hexdigest()
        if received != expected:
            self._problem(f"bytes {self._start}..{self._fed}: sha256 {received[:16]} "
                          f"received, {expected[:16]} written")
            # compared: what follows is compared from here
            self._start = self._fed
            self._received = hashlib.sha256()
            self._expected = hashlib.sha256()

    def _problem(self, text: str) -> None:
        if len(self.problems) < 5:
            self.problems.append(text)


class ObsStep(enum.StrEnum):
    """What a driver carries out for an observer."""

    ATTACH = "obs_attach"  # open a stream as a new observer on ObserverRun.session
    DROP = "obs_drop"  # close the stream (the server detaches the client)
    REATTACH = "obs_reattach"  # open a stream again from ObserverRun.client.offset
    LEAVE = "obs_leave"  # close the stream for good


_STEPS = (ObsStep.ATTACH, ObsStep.DROP, ObsStep.REATTACH, ObsStep.LEAVE)


class ObserverRun:
    """One machine's observer visits (:attr:`AgentPlan.watch`) through a run.

    A visit attaches at ``at`` while the agent is connected (else it is skipped), drops its
    stream at ``drop``, re-attaches at ``back`` if the agent is still on the same session and
    connected, and leaves at ``leave``. A stream the server closed (the session ended) ends
    the visit. Nothing is done at or after ``stop_at``. ``clients`` holds every visit's
    :class:`StreamClient`.
    """

    __slots__ = ("_pos", "_visit", "agent", "client", "clients", "due", "refusals",
                 "retention", "skipped", "step", "stop_at")

    def __init__(self, agent: AgentRun, retention: int = DEFAULT_RETENTION) -> None:
        self.agent = agent
        self.stop_at = agent.stop_at
        self.retention = retention
        self.client: StreamClient | None = None
        self.clients: list[StreamClient] = []
        self.refusals = 0
        self.skipped = 0
        self._visit = 0
        self._pos = 0
        self.step: ObsStep | None = None
        self.due = INF
        self._plan_next()

    @property
    def _current(self) -> ObserverVisit:
        return self.agent.plan.watch[self._visit]

    def take(self, now: float) -> ObsStep | None:
        """The step to carry out now (``None``: nothing is due, or it was skipped)."""
        step = self.step
        if step is None or now < self.due:
            return None
        if now >= self.stop_at:
            self.skipped += 1
            self.step, self.due = None, INF
            return None
        agent, client = self.agent, self.client
        if step is ObsStep.ATTACH:
            session, log = agent.session, agent.output
            if not agent.connected or session is None or log is None:
                self._skip(end=True)
                return None
            self.client = StreamClient(session, log, "observer", self._current.user_email,
                                       retention=self.retention)
            self.clients.append(self.client)
        elif step is ObsStep.REATTACH:
            assert client is not None
            if (not agent.connected or agent.session is not client.session
                    or client.position is None):
                self._skip(end=True)
                return None
        elif client is None or not client.open:
            self._skip(end=step is ObsStep.DROP)
            return None
        self._pos += 1
        self.due = INF  # until the driver says how it went
        return step

    def done(self) -> None:
        """The step was carried out (the stream opened, or closed)."""
        self._plan_next()

    def refused(self) -> None:
        """The server refused the stream (the session is not CONNECTED or BACKGROUND now)."""
        self.refusals += 1
        self._end_visit()
        self._plan_next()

    def _skip(self, end: bool) -> None:
        self.skipped += 1
        if end:
            self._end_visit()
        else:
            self._pos += 1
        self._plan_next()

    def _end_visit(self) -> None:
        self._visit += 1
        self._pos = 0
        self.client = None

    def _plan_next(self) -> None:
        visits = self.agent.plan.watch
        if self._pos >= len(_STEPS):
            self._end_visit()
        if self._visit >= len(visits):
            self.step, self.due = None, INF
            return
        visit = visits[self._visit]
        step = _STEPS[self._pos]
        due = (visit.at, visit.drop, visit.back, visit.leave)[self._pos]
        if due >= self.stop_at:
            self.step, self.due = None, INF
            return
        self.step, self.due = step, due


def output_stats(runs: Iterable[AgentRun], clients: Iterable[StreamClient],
                 refused: int) -> tuple[dict[str, int], list[str]]:
    """The output and stream counts of :class:`~tether.sim.SimResult` for a fleet's agents
    and stream clients (``refused``: streams the server refused), with each mismatching
    client's problems."""
    counts = {"output_bytes": 0, "output_resent": 0, "stream_clients": 0,
              "stream_reattaches": 0, "stream_gaps": 0, "stream_refused": refused,
              "stream_bytes": 0, "output_mismatches": 0}
    for run in runs:
        counts["output_bytes"] += run.output_bytes
        counts["output_resent"] += run.output_resent
    problems = []
    for client in clients:
        if not client.streams:
            continue
        counts["stream_clients"] += 1
        counts["stream_reattaches"] += client.reattaches
        counts["stream_gaps"] += client.gaps
        counts["stream_bytes"] += client.bytes
        found = client.verdict()
        if found:
            counts["output_mismatches"] += 1
            problems.append(f"output mismatch: {client.mode} {client.user_email} on "
                            f"{client.session.session_id} ({client.session.machine_id}): "
                            + "; ".join(found))
    return counts, problems
