"""The operator visits of one machine over a run, as a pure model: no trio, no HTTP, no engine.

An operator acts on the session of the agent it visits (an :class:`~tether.sim._agent.AgentRun`)
and only while that session is CONNECTED as far as the agent knows: a step due while the agent
is away, in the background or on another session is skipped. The server may still refuse a step
the operator takes (the agent's ``foreground`` may not have reached it yet; the session may have
ended meanwhile): a refusal is counted, never expected to show anywhere. Only a command the
server accepted is added to the session's expectations (``operator_commands``).

A driver asks :attr:`OperatorRun.due`, calls :meth:`OperatorRun.take` at that time and reports
how the server answered: :meth:`attached`, :meth:`accepted`, :meth:`detached`, :meth:`refused`,
:meth:`unavailable` (a cluster's 503: the session's node cannot be reached, the step was not
made; it is taken again shortly, as a person would) or :meth:`failed` (no answer: the outcome
is unknown, which the driver counts as an error).

An attached operator also watches the session's output through an attach stream on its client
(:attr:`OperatorRun.stream`, a :class:`~tether.sim._stream.StreamClient`, made by
:meth:`attached`): the driver opens it after the attach, drops and re-attaches it from its
offset before the visit's first command (:attr:`OperatorRun.reattach`), and lets it go with the
client (the server closes a detached client's stream).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from ._agent import INF
from ._stream import DEFAULT_RETENTION, StreamClient

#: A step answered 503 ``unavailable`` is taken again after this (seconds).
RETRY_UNAVAILABLE = 0.5

if TYPE_CHECKING:
    from ._agent import AgentRun, SessionExpect
    from ._behaviour import OperatorVisit


class OpStep(enum.StrEnum):
    """What a driver carries out for an operator."""

    ATTACH = "op_attach"  # attach a client, mode operator, to OperatorRun.session
    RUN = "op_run"  # run OperatorRun.command through the attached client
    DETACH = "op_detach"  # detach the client


class OperatorRun:
    """One machine's operator visits (:attr:`AgentPlan.visits`) through a run.

    A visit is ATTACH at ``at``, one RUN every ``gap`` seconds, DETACH ``gap`` after the last.
    Nothing is done at or after ``stop_at`` (the end of the run). A visit whose attach is
    skipped or refused is over; a visit's later steps go on after a refused RUN (the session
    may be CONNECTED again by the next one), and its DETACH is tried while the client may
    still be attached.
    """

    __slots__ = (
        "_pos",
        "_visit",
        "agent",
        "client_id",
        "command",
        "commands",
        "due",
        "refused_steps",
        "retention",
        "session",
        "skipped",
        "step",
        "stop_at",
        "stream",
        "streams",
        "visits",
    )

    def __init__(self, agent: AgentRun, retention: int = DEFAULT_RETENTION) -> None:
        self.agent = agent
        self.retention = retention
        self.stream: StreamClient | None = None
        self.streams: list[StreamClient] = []
        self.stop_at = agent.stop_at
        self.visits = 0  # visits attached
        self.commands = 0  # commands the server accepted
        self.refused_steps = 0
        self.skipped = 0
        self.session: SessionExpect | None = None
        self.client_id: str | None = None
        self.command: tuple[str, int] | None = None
        self._visit = 0
        self._pos = 0  # steps of the current visit taken (0: ATTACH is next)
        self.step: OpStep | None = None
        self.due = INF
        self._plan_next()

    @property
    def user_email(self) -> str:
        return self._current.user_email

    @property
    def reattach(self) -> bool:
        """Whether the stream is dropped and re-attached before this step (the visit's first
        command)."""
        return self.step is OpStep.RUN and self._pos == 1

    @property
    def _current(self) -> OperatorVisit:
        return self.agent.plan.visits[self._visit]

    # -- the driver's questions ------------------------------------------------------------

    def take(self, now: float) -> OpStep | None:
        """The step to carry out now (``None``: nothing is due, or it was skipped).

        A driver running late (a loaded server) may get here at or after ``stop_at`` for a
        step due before it: the operators stop there, as planned steps after it would, and an
        attached client stays attached (the expectations say so).
        """
        step = self.step
        if step is None or now < self.due:
            return None
        if now >= self.stop_at:
            self.skipped += 1
            self.step, self.due = None, INF
            return None
        agent = self.agent
        on_session = (agent.connected and not agent.in_background
                      and agent.session is not None
                      and (step is OpStep.ATTACH or agent.session is self.session))
        if step is OpStep.DETACH:
            session = self.session
            if session is not None and session.status in ("DISCONNECTED", "ERROR"):
                self._gone()  # the server detached every client when the session ended
                self.skipped += 1
                self._plan_next()
                return None
        elif not on_session:
            self.skipped += 1
            if step is OpStep.ATTACH:
                self._end_visit()
            else:
                self._pos += 1
            self._plan_next()
            return None
        if step is OpStep.ATTACH:
            self.session = agent.session
        elif step is OpStep.RUN:
            self.command = self._current.commands[self._pos - 1]
        self.due = INF  # until the driver reports the server's answer
        return step

    # -- what the server said --------------------------------------------------------------

    def attached(self, client_id: str) -> None:
        assert self.session is not None
        self.client_id = client_id
        self.session.clients += 1
        self.visits += 1
        log = self.agent.output
        if log is not None:
            self.stream = StreamClient(self.session, log, "operator", self.user_email,
                                       client_id=client_id, retention=self.retention)
            self.streams.append(self.stream)
        self._pos = 1
        self._plan_next()

    def accepted(self, command_id: str) -> None:
        """The server accepted the command: the session's history must show it."""
        assert self.session is not None and self.command is not None
        command, exit_code = self.command
        self.session.operator_commands.append(
            (command_id, command, exit_code, self._current.user_email))
        self.commands += 1
        self._pos += 1
        self._plan_next()

    def detached(self) -> None:
        self._gone()
        self._plan_next()

    def refused(self) -> None:
        """The server refused the step (409 session_not_active, 404 client_not_found)."""
        self.refused_steps += 1
        self._settle()

    def unavailable(self, now: float) -> None:
        """The server answered 503 ``unavailable``: the step was not made (the session's node
        is out of reach, for instance being replaced): take it again shortly. Counted as
        refused."""
        self.refused_steps += 1
        self.due = round(now + RETRY_UNAVAILABLE, 1)

    def failed(self) -> None:
        """The step got no answer (the outcome is unknown): go on as if it was refused."""
        self._settle()

    def _settle(self) -> None:
        step = self.step
        if step is OpStep.ATTACH:
            self._end_visit()
        elif step is OpStep.RUN:
            self._pos += 1
        else:
            self._gone()  # refused: the client is not attached (session ended, or detached)
        self._plan_next()

    # -- the schedule ----------------------------------------------------------------------

    def _gone(self) -> None:
        if self.session is not None and self.client_id is not None:
            self.session.clients -= 1
        self._end_visit()

    def _end_visit(self) -> None:
        self.stream = None
        self.client_id = None
        self.session = None
        self._visit += 1
        self._pos = 0

    def _plan_next(self) -> None:
        visits = self.agent.plan.visits
        if self._visit >= len(visits):
            self.step, self.due = None, INF
            return
        visit = visits[self._visit]
        n = len(visit.commands)
        if self._pos == 0:
            step = OpStep.ATTACH
        elif self._pos <= n:
            step = OpStep.RUN
        else:
            step = OpStep.DETACH
        due = round(visit.at + self._pos * visit.gap, 1)
        if due >= self.stop_at:
            self.step, self.due = None, INF
            return
        self.step, self.due = step, due
