"""One simulated agent over a run: its plan turned into steps, and what it expects the server
to show for each of its sessions. Pure: no trio, no sockets, no engine.

A driver asks :attr:`AgentRun.due` when the agent next acts, calls :meth:`AgentRun.take` at
that time to learn what to do, carries it out, and reports back what only the server can say
(:meth:`welcomed`, :meth:`hello_failed`, :meth:`run_command`, :meth:`ended_by_server`,
:meth:`resume_refused`). :meth:`take` updates the agent's expectations as it hands out the
step: sending a frame is the action.

A session the server ends under its agent (the API terminated it, or another hello for the
machine replaced it: the socket closes with that reason) is something a fleet meets in real
life, not an error: the agent, as a real one would, says a fresh hello without its old resume
token after a short backoff and goes on with its plan on the new session. So does an agent
whose resume the server refuses (the session ended while it was away).

So is a node going away under its agent (killed, restarting, draining: :meth:`node_lost`): the
agent resumes its session at once with its token, on another node of a cluster, retrying a
connection that fails with a short backoff (:meth:`retry_connect`); its session is in
GRACE_PERIOD meanwhile, as the server shows it.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING

from ._behaviour import Act, Kind, TelemetryWalk
from ._output import BusyWriter, OutputLog, command_output
from ._shell import exit_code_of

if TYPE_CHECKING:
    from ._behaviour import AgentPlan
    from ._output import Piece

INF = math.inf

#: Close reasons with which the server ends a live session under its agent: the API terminated
#: it (``DELETE /v1/sessions/{id}``), or another hello for the machine replaced it.
SERVER_ENDS = frozenset({"terminated", "replaced"})
#: ``error`` frames a node sends before closing a socket whose session goes on elsewhere (it
#: stops; another node runs the session now): the agent resumes, nothing is wrong.
RESUME_ASKED = frozenset({"node_draining", "session_moved"})
#: How long an agent waits before its fresh hello after the server ended its session: doubled
#: for each further end in the run, up to the cap.
RECONNECT_BACKOFF = 1.0
RECONNECT_BACKOFF_MAX = 30.0
#: A failed connection is tried again (on the next node) after this, doubled per further
#: failure in a row, up to the cap; after ``CONNECT_RETRIES`` failures in a row the agent
#: gives up (an error).
CONNECT_BACKOFF = 0.2
CONNECT_BACKOFF_MAX = 5.0
CONNECT_RETRIES = 10
#: Frames an agent sent this long (seconds) before its node went away may have died with the
#: node: a node writes what its agents report in batches, so a ``kill -9`` loses the last
#: moments' reports (normally milliseconds' worth; more on a loaded node).
NODE_LOSS_WINDOW = 2.0


def _tick(t: float) -> float:
    """Times are kept in steps of 0.1 s (see ``_behaviour``)."""
    return round(t, 1)


class Step(enum.StrEnum):
    """What a driver carries out."""

    HELLO = "hello"  # connect and say hello without a resume token
    RESUME = "resume"  # connect and say hello with the resume token
    HEARTBEAT = "heartbeat"  # with telemetry (AgentRun.telemetry)
    COMMAND = "command"  # AgentRun.command: (command_id, command, exit_code)
    RESULT = "command_result"  # AgentRun.command: (command_id, command, exit_code)
    BACKGROUND = "background"
    FOREGROUND = "foreground"
    DROP = "drop"  # close the socket without goodbye (a busy machine's last write is lost)
    RESTART = "restart"  # close the socket without goodbye, then HELLO at once
    GOODBYE = "goodbye"
    FATAL = "fatal"  # an error frame with fatal=true
    OUTPUT = "output"  # only AgentRun.outbox: a busy machine's lines


class SessionExpect:
    """What the server should show for one session, from what its agent did.

    ``status`` is the status the agent's last action implies, since ``since`` (seconds of the
    run). A session left in GRACE_PERIOD is expected DISCONNECTED (``grace_expired``) once
    ``grace`` seconds have passed; ``reasons`` are the acceptable reasons of a final status.

    ``commands`` is the history as the agent made it (commands it reported, run_command frames
    it answered), in order. What simulated operators add is kept apart, from their side:
    ``operator_commands`` (command_id, command, exit code, user_email) are the commands the
    server accepted from them, each of which the history must show as given, and ``clients``
    is how many of them are attached (none, once the session has ended).

    ``server_ended``: the server ended the session (``terminated``, ``replaced``) at a moment
    the agent cannot place among its own last frames, so the server may have applied only the
    frames sent before it: the history may be a prefix of ``commands``, an operator's command
    may be lost unanswered, and the telemetry shown may be any sample sent on the session
    (``telemetry_sent``) or none. ``first_sample`` is how many telemetry samples the agent had
    drawn when the session started. ``node`` is the index of the server (among a cluster's
    node URLs) its agent was last welcomed by. ``maybe_lost``: commands the agent reported (or
    answered) within :data:`NODE_LOSS_WINDOW` before its node went away; the history may lack
    them.
    """

    __slots__ = ("clients", "commands", "first_sample", "grace", "kind", "machine_id",
                 "maybe_lost", "node", "operator_commands", "reasons", "server_ended",
                 "session_id", "since", "status", "telemetry", "telemetry_sent")

    def __init__(self, session_id: str, machine_id: str, kind: Kind, grace: float,
                 now: float) -> None:
        self.session_id = session_id
        self.machine_id = machine_id
        self.kind = kind
        self.grace = grace
        self.status = "CONNECTED"
        self.since = now
        self.reasons: tuple[str, ...] = ()
        self.commands: list[tuple[str, str, int]] = []
        self.telemetry: tuple[float, float, float] | None = None
        self.operator_commands: list[tuple[str, str, int, str]] = []
        self.clients = 0
        self.server_ended = False
        self.first_sample = 0
        self.telemetry_sent: list[tuple[float, float, float]] = []
        self.node = 0
        self.maybe_lost: list[tuple[str, str, int]] = []

    def set(self, status: str, now: float, *reasons: str) -> None:
        self.status = status
        self.since = now
        self.reasons = reasons

    def allowed(self, now: float, margin: float) -> dict[str, tuple[str, ...]]:
        """Acceptable statuses at ``now`` (run seconds), each with its acceptable reasons."""
        if self.status != "GRACE_PERIOD":
            return {self.status: self.reasons}
        expires = self.since + self.grace
        if now < expires - margin:
            return {"GRACE_PERIOD": ()}
        if now > expires + margin:
            return {"DISCONNECTED": ("grace_expired",)}
        return {"GRACE_PERIOD": (), "DISCONNECTED": ("grace_expired",)}

    def to_builtins(self) -> list[object]:
        return [self.session_id, self.machine_id, self.kind.value, self.grace, self.status,
                self.since, list(self.reasons), [list(c) for c in self.commands],
                None if self.telemetry is None else list(self.telemetry),
                [list(c) for c in self.operator_commands], self.clients, self.server_ended,
                [list(t) for t in self.telemetry_sent], self.node,
                [list(c) for c in self.maybe_lost]]

    @classmethod
    def from_builtins(cls, data: list[object]) -> SessionExpect:
        (session_id, machine_id, kind, grace, status, since, reasons, commands,
         telemetry, operator_commands, clients, server_ended, telemetry_sent, node,
         maybe_lost) = data
        e = cls(str(session_id), str(machine_id), Kind(kind), float(grace), float(since))  # type: ignore[arg-type]
        e.set(str(status), float(since), *reasons)  # type: ignore[arg-type,misc]
        e.commands = [(str(c[0]), str(c[1]), int(c[2])) for c in commands]  # type: ignore[attr-defined]
        e.telemetry = None if telemetry is None else tuple(telemetry)  # type: ignore[arg-type,assignment]
        e.operator_commands = [(str(c[0]), str(c[1]), int(c[2]), str(c[3]))
                               for c in operator_commands]  # type: ignore[attr-defined]
        e.clients = int(clients)  # type: ignore[call-overload]
        e.server_ended = bool(server_ended)
        e.telemetry_sent = [tuple(t) for t in telemetry_sent]  # type: ignore[attr-defined]
        e.node = int(node)  # type: ignore[call-overload]
        e.maybe_lost = [(str(c[0]), str(c[1]), int(c[2])) for c in maybe_lost]  # type: ignore[attr-defined]
        return e


class AgentRun:
    """One agent's progress through its plan.

    ``heartbeat_every`` overrides the welcome's heartbeat interval. Nothing scripted happens at
    or after ``stop_at`` (the end of the run); heartbeats go on until the driver stops asking,
    repeating the last telemetry sample, so the expectations hold still while they are checked.

    ``server_ends`` counts the sessions the server ended under the agent (or, as a refused
    resume showed, while it was away); ``server_replaced`` those of them ``replaced``.
    ``failovers`` counts the times its node went away under it and it came back (resumed,
    or told its session had ended meanwhile); ``connect_retries`` the connections it tried
    again.

    Output (``_output.py``): ``output`` is the current session's :class:`OutputLog`. Every
    step, and every welcome, leaves in ``outbox`` the ``output`` frames to send before the
    step's own frame (a command's output before its report; on a resume, what the server
    lacks from its ``output_offset``, and what the machine wrote while the agent was away).
    ``output_trouble`` says why a welcome's ``output_offset`` could not be honoured (the
    driver counts it as an error).
    """

    __slots__ = (
        "_cmd_seq",
        "_offline_fresh",
        "_recent",
        "_resent",
        "_results",
        "_script_pos",
        "_wrote",
        "answered",
        "busy",
        "command",
        "connect_failures",
        "connect_retries",
        "connected",
        "done",
        "due",
        "failing_over",
        "failovers",
        "grace",
        "hb_every",
        "hb_override",
        "in_background",
        "next_hb",
        "next_step",
        "outbox",
        "output",
        "output_trouble",
        "plan",
        "reconnect_at",
        "resume_token",
        "server_ends",
        "server_replaced",
        "session",
        "sessions",
        "started_at",
        "stop_at",
        "telemetry",
        "walk",
    )

    def __init__(self, plan: AgentPlan, *, stop_at: float,
                 heartbeat_every: float | None = None) -> None:
        self.plan = plan
        self.stop_at = stop_at
        self.hb_override = heartbeat_every
        self.hb_every = heartbeat_every or 30.0
        self.grace = 30.0
        self.walk = TelemetryWalk(plan.seed)
        self.connected = False
        self.in_background = False
        self.done = False
        self.session: SessionExpect | None = None
        self.sessions: list[SessionExpect] = []
        self.resume_token: str | None = None
        self.next_step: Step | None = Step.HELLO
        self.due = plan.start
        self.next_hb = INF
        self.reconnect_at = INF
        self._offline_fresh = True  # the next hello is a fresh one (no resume token)
        self._script_pos = 0
        self._results: list[tuple[str, str, int]] = []
        #: (time, command) of the session's recent reports: what a node loss may take along.
        self._recent: list[tuple[float, tuple[str, str, int]]] = []
        self._cmd_seq = 0
        self.answered = 0  # run_command frames answered
        self.server_ends = 0
        self.server_replaced = 0
        self.failing_over = False  # its node went away; not welcomed back yet
        self.failovers = 0
        self.connect_failures = 0  # in a row
        self.connect_retries = 0
        self.started_at = plan.start
        self.telemetry: tuple[float, float, float, int, int, int] | None = None
        self.command: tuple[str, str, int] | None = None
        self.output: OutputLog | None = None
        self._wrote = 0  # output bytes written, and resent, on earlier sessions
        self._resent = 0
        self.outbox: list[Piece] = []
        self.output_trouble: str | None = None
        self.busy = BusyWriter(plan.seed, plan.start + 1.0) if plan.busy else None

    # -- the driver's questions ------------------------------------------------------------

    def take(self, now: float) -> Step | None:
        """The step to carry out now (``None``: nothing is due). Updates the expectations."""
        step = self.next_step
        if step is None or now < self.due:
            return None
        session = self.session
        if step is Step.HEARTBEAT:
            self.next_hb = _tick(now + self.hb_every)
            t = self.telemetry
            if t is None or now < self.stop_at:  # after the run, the readings hold still
                t = self.telemetry = self.walk.sample(now - self.started_at)
            if session is not None:
                session.telemetry = (t[0], t[1], t[2])
        elif step is Step.RESULT:
            self.command = result = self._results.pop(0)
            self.answered += 1
            if session is not None:
                session.commands.append(result)
                self._reported(now, result)
            self._print(result)
        elif step is Step.OUTPUT:
            assert self.busy is not None
            self._busy_write()
        elif step in (Step.HELLO, Step.RESUME):
            self.next_step = None  # wait for welcomed() / hello_failed()
            self.due = INF
            return step
        elif now >= self.stop_at:  # a late driver: the script ends with the run, as planned
            self._script_pos = len(self.plan.script)
            step = None
        else:
            self._scripted(now, session)
            step = self.next_step
        self._schedule(now)
        return step

    def _scripted(self, now: float, session: SessionExpect | None) -> None:
        item = self.plan.script[self._script_pos]
        self._script_pos += 1
        act = item.act
        if (act is Act.FOREGROUND and not self.in_background) or (
                act is Act.BACKGROUND and self.in_background):
            # a session started after the server ended the last one starts in the foreground:
            # the app is already where this step would take it
            self.next_step = None
            return
        if act is Act.COMMAND:
            self._cmd_seq += 1
            self.command = (f"{self.plan.machine_id}-c{self._cmd_seq}", item.command,
                            item.exit_code)
            if session is not None:
                session.commands.append(self.command)
                self._reported(now, self.command)
            self._print(self.command)
        elif act is Act.BACKGROUND:
            self.in_background = True
            if session is not None:
                session.set("BACKGROUND", now)
        elif act is Act.FOREGROUND:
            self.in_background = False
            if session is not None:
                session.set("CONNECTED", now)
        elif act is Act.DROP:
            if self.busy is not None and self.busy.next_at < self.stop_at:
                self._busy_write(send=False)  # written as the network went: never arrives
            self._go_offline(now, session)
            if item.offline < 1:
                # within the grace period, and within the run
                away = item.offline * min(self.grace, 0.2 * self.stop_at)
                self._offline_fresh = False
            else:
                away = item.offline * self.grace
                self._offline_fresh = True
            self.reconnect_at = _tick(now + away) if now + away < self.stop_at else INF
        elif act is Act.RESTART:
            self._go_offline(now, None)
            if session is not None:
                session.set("DISCONNECTED", now, "replaced")
            self._offline_fresh = True
            self.reconnect_at = _tick(now)
        elif act is Act.GOODBYE:
            self._end(now, session, "DISCONNECTED", "agent_goodbye")
        elif act is Act.FATAL:
            self._end(now, session, "ERROR", "agent_error")
        self.next_step = _ACT_STEP[act]

    def _set_output(self, log: OutputLog | None) -> None:
        old = self.output
        if old is not None:
            self._wrote += old.written
            self._resent += old.resent
        self.output = log

    @property
    def output_bytes(self) -> int:
        """Output bytes written over the run."""
        return self._wrote + (self.output.written if self.output is not None else 0)

    @property
    def output_resent(self) -> int:
        """Output bytes sent again after resumes over the run."""
        return self._resent + (self.output.resent if self.output is not None else 0)

    def _print(self, command: tuple[str, str, int]) -> None:
        """The command's output goes out before its report."""
        log = self.output
        if log is None:
            return
        command_id, text, exit_code = command
        for data, stream in command_output(text, exit_code):
            piece = log.write(data, stream, command_id)
            if piece is not None:
                self.outbox.append(piece)

    def _busy_write(self, send: bool = True) -> None:
        """The busy machine's next write, into the session's log (and the outbox)."""
        assert self.busy is not None
        lines = self.busy.lines()
        log = self.output
        if log is None:
            return
        for data, stream in lines:
            piece = log.write(data, stream)
            if piece is not None and send:
                self.outbox.append(piece)

    def _reported(self, now: float, command: tuple[str, str, int]) -> None:
        recent = self._recent
        while recent and recent[0][0] < now - NODE_LOSS_WINDOW:
            recent.pop(0)
        recent.append((now, command))

    def _go_offline(self, now: float, session: SessionExpect | None) -> None:
        self.connected = False
        self.in_background = False
        self.next_hb = INF
        if session is not None:
            session.set("GRACE_PERIOD", now)

    def _end(self, now: float, session: SessionExpect | None, status: str, reason: str) -> None:
        self.connected = False
        self.done = True
        self.next_hb = INF
        if session is not None:
            session.set(status, now, reason)
        self.session = None
        self._set_output(None)

    def _schedule(self, now: float) -> None:
        """Pick the next step and when it is due."""
        if self.done:
            self.next_step, self.due = None, INF
            return
        if not self.connected:
            if self.reconnect_at < INF:
                self.next_step = Step.HELLO if self._offline_fresh else Step.RESUME
                self.due = self.reconnect_at
            else:
                self.next_step, self.due = None, INF
            return
        if self._results:
            self.next_step, self.due = Step.RESULT, now
            return
        step, due = Step.HEARTBEAT, self.next_hb
        script = self.plan.script
        if self._script_pos < len(script):
            at = max(script[self._script_pos].at, _tick(now))
            if at < due and at < self.stop_at:
                step, due = Step.COMMAND, at  # any scripted step: resolved in take()
        busy = self.busy
        if busy is not None and self.output is not None:
            at = max(busy.next_at, _tick(now))
            if at < due and busy.next_at < self.stop_at:
                step, due = Step.OUTPUT, at
        self.next_step, self.due = step, due

    # -- what the server said --------------------------------------------------------------

    def welcomed(self, now: float, session_id: str, resume_token: str, heartbeat_interval: float,
                 grace_period: float, resumed: bool, output_offset: int = 0) -> None:
        """The server welcomed the hello (or the resume), having the session's output up to
        ``output_offset``: what it lacks goes into :attr:`outbox`."""
        self.connected = True
        self.in_background = False
        if self.failing_over:
            self.failing_over = False
            self.failovers += 1
        self.connect_failures = 0
        self.resume_token = resume_token
        self.reconnect_at = INF
        self.grace = grace_period
        if self.hb_override is None:
            self.hb_every = heartbeat_interval
        previous = self.session
        self.output_trouble = None
        self.outbox.clear()
        if resumed and previous is not None and previous.session_id == session_id:
            previous.set("CONNECTED", now)
            self._resend(now, output_offset)
        else:
            if previous is not None and previous.status == "GRACE_PERIOD":
                # a fresh hello ends a session still in grace (replaced), or it had expired
                previous.set("DISCONNECTED", now, "grace_expired", "replaced")
            self._results.clear()  # commands of an ended session are lost with it
            self.session = SessionExpect(session_id, self.plan.machine_id, self.plan.kind,
                                         grace_period, now)
            self.session.first_sample = self.walk.samples
            self.sessions.append(self.session)
            self._set_output(OutputLog() if self.plan.output else None)
            busy = self.busy
            while busy is not None and busy.next_at < now:
                busy.lines()  # written while there was no session: gone with the last one
            if output_offset:
                self.output_trouble = (f"a new session's welcome says output_offset "
                                       f"{output_offset}, not 0")
        self.next_hb = _tick(now)  # heartbeat (with telemetry) right away
        self._schedule(now)

    def _resend(self, now: float, output_offset: int) -> None:
        """A resume: the machine's writes while the agent was away join the log, and what
        the server lacks of it (from ``output_offset``) goes out again."""
        log = self.output
        if log is None:
            return
        written, kept_from = log.written, log.kept_from
        pieces = log.resend_from(output_offset)
        if pieces is None:
            self.output_trouble = (
                f"the welcome's output_offset {output_offset} is past the {written} bytes "
                "written" if output_offset > written else
                f"the welcome's output_offset {output_offset} asks for bytes no longer kept "
                f"(from {kept_from}): no more output on the session")
            return
        self.outbox.extend(pieces)
        busy = self.busy
        while busy is not None and busy.next_at <= now and busy.next_at < self.stop_at:
            self._busy_write()

    def hello_failed(self, now: float) -> None:
        """The hello was refused or the connection failed: the agent gives up."""
        self.connected = False
        self.done = True
        self.failing_over = False
        self.next_step, self.due = None, INF

    def retry_connect(self, now: float, step: Step) -> bool:
        """The connection for ``step`` (HELLO or RESUME) failed before a welcome (refused,
        reset, timed out): try again after a backoff, unless it failed
        :data:`CONNECT_RETRIES` times in a row (then False: call :meth:`hello_failed`)."""
        if self.connect_failures >= CONNECT_RETRIES:
            return False
        delay = min(CONNECT_BACKOFF * 2.0 ** self.connect_failures, CONNECT_BACKOFF_MAX)
        self.connect_failures += 1
        self.connect_retries += 1
        self.next_step, self.due = step, _tick(now + delay)
        return True

    def node_lost(self, now: float) -> bool:
        """The socket closed under the agent without a session end (its node was killed,
        restarts or drains): it resumes at once with its token. True if this is news to the
        agent (it was connected)."""
        if not self.connected or self.session is None:
            return False
        self.session.maybe_lost += [c for t, c in self._recent if t >= now - NODE_LOSS_WINDOW]
        self._go_offline(now, self.session)
        self.failing_over = True
        self._offline_fresh = False
        self.reconnect_at = _tick(now)  # also after the run: its expectations hold still
        self._schedule(now)
        return True

    def run_command(self, command_id: str, command: str) -> None:
        """The server asked the agent to run a command: it answers at once, with the exit code
        the machine's shell gives that command (:func:`~tether.sim._shell.exit_code_of`)."""
        self._results.append((command_id, command, exit_code_of(command)))
        if self.connected and self.next_step is not Step.RESULT:
            self.next_step, self.due = Step.RESULT, min(self.due, self.next_hb, 0.0)

    def awaiting(self, command_id: str) -> bool:
        """Whether the agent got ``run_command`` ``command_id`` and has yet to answer it."""
        return any(r[0] == command_id for r in self._results)

    def ended_by_server(self, now: float, reason: str) -> bool:
        """The server closed the socket with a reason of :data:`SERVER_ENDS`: it ended the live
        session. The agent reconnects (a fresh hello, after :meth:`_backoff`) if the run is
        still on. True if this is news to the agent (it was connected): count it once."""
        if not self.connected:
            return False
        session = self.session
        self.connected = False
        self.in_background = False
        self.next_hb = INF
        if session is not None:
            session.set("DISCONNECTED", now, reason)
        self._server_end(now, reason)
        return True

    def resume_refused(self, now: float) -> None:
        """The server refused the resume token: the session ended while the agent was away
        (the API terminated it; the check holds the server to that). As the protocol asks,
        the agent says a fresh hello without a token, after :meth:`_backoff`."""
        session = self.session
        if session is not None:
            session.set("DISCONNECTED", now, "terminated")
        if self.failing_over:  # it came back: the session ended while its node was away
            self.failing_over = False
            self.failovers += 1
        self._server_end(now, "terminated")

    def _server_end(self, now: float, reason: str) -> None:
        session = self.session
        if session is not None:
            session.server_ended = True
            session.telemetry_sent = TelemetryWalk.replay(
                self.plan.seed, session.first_sample, self.walk.samples)
        self.session = None
        self._set_output(None)
        self._results.clear()  # commands of an ended session are lost with it
        self.server_ends += 1
        if reason == "replaced":
            self.server_replaced += 1
        self._offline_fresh = True
        at = now + self._backoff()
        self.reconnect_at = _tick(at) if at < self.stop_at else INF
        self._schedule(now)

    def _backoff(self) -> float:
        """:data:`RECONNECT_BACKOFF`, doubled for each earlier end in the run, capped."""
        return min(RECONNECT_BACKOFF * 2.0 ** (self.server_ends - 1), RECONNECT_BACKOFF_MAX)

    def closed_by_server(self) -> bool:
        """The server closed the socket. True if the agent did not expect it (an error)."""
        if not self.connected:
            return False
        self.connected = False
        self.done = True
        self.next_step, self.due = None, INF
        return True


_ACT_STEP = {
    Act.COMMAND: Step.COMMAND,
    Act.BACKGROUND: Step.BACKGROUND,
    Act.FOREGROUND: Step.FOREGROUND,
    Act.DROP: Step.DROP,
    Act.RESTART: Step.RESTART,
    Act.GOODBYE: Step.GOODBYE,
    Act.FATAL: Step.FATAL,
}
