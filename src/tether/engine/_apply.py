"""The adapter around the pure lifecycle: runs ``step`` on a record and carries out its effects.

Everything a lifecycle change does to the world goes through :meth:`Applier.apply`: the record
takes the core's new state, then each effect is interpreted in the order the core gave
(clients removed with their events, the read index, the agent's link, pending commands, the
machine map and retention, the event itself, a ``run_command``). Nothing here decides a rule;
it only does what an effect says. Handlers that call it run inside the session's actor (or,
for a session being created, before its actor exists), so a session's changes never
interleave.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._lifecycle import (
    AddClient,
    Change,
    Emit,
    End,
    Input,
    LoseCommands,
    Outcome,
    Reindex,
    ReleaseLink,
    RemoveClient,
    Request,
    SendCommand,
    step,
)
from ._models import EventClient, RunCommand, Status
from ._record import OperatorCommand

if TYPE_CHECKING:
    from ._clock import WallClock
    from ._config import EngineConfig
    from ._events import EventLog
    from ._journal import Journal
    from ._models import AttachedClient, Event, EventCommand
    from ._ports import AgentTransport
    from ._record import SessionRecord
    from ._table import SessionTable

log = logging.getLogger("tether.engine")


def close_transport(transport: AgentTransport, reason: str) -> None:
    """Tell a transport the session no longer uses it; one that fails is only logged (the
    session's change has happened either way)."""
    try:
        transport.close(reason)
    except Exception:
        log.warning("agent transport failed to close (%s)", reason, exc_info=True)


def _event_client(client: AttachedClient) -> EventClient:
    return EventClient(client_id=client.client_id, user_email=client.user_email,
                       mode=client.mode)


class Applier:
    """Applies lifecycle requests to records, emitting their events into ``events``."""

    def __init__(self, table: SessionTable, events: EventLog, clock: WallClock,
                 config: EngineConfig) -> None:
        self.table = table
        self.events = events
        self.clock = clock
        self.config = config
        self.journal: Journal | None = None  # with a store: every change is marked in it

    def check_writable(self) -> None:
        """With a store: raise ``StoreUnavailable`` while it is away (before any change)."""
        if self.journal is not None:
            self.journal.check_available()

    def change(self, rec: SessionRecord, inp: Input, now: float,
               detail: str | None = None) -> Outcome:
        """Apply a lifecycle input (``detail``: the agent's own words for it)."""
        return self.apply(rec, Change(inp, detail), now)

    def end(self, rec: SessionRecord, inp: Input, now: float) -> None:
        """End ``rec`` with ``inp`` unless it has ended already (shutdown, replace)."""
        if not rec.status.final:
            self.apply(rec, Change(inp), now)

    def apply(self, rec: SessionRecord, request: Request, now: float) -> Outcome:
        outcome = step(rec.state(), request, now)  # raises, changing nothing, if refused
        before = rec.status
        if isinstance(request, Change):
            rec.enter(outcome.state)
            rec.version += 1
        unreachable = False
        for effect in outcome.effects:
            match effect:
                case Emit():
                    self.emit(rec, effect.type, effect.previous, effect.reason, now,
                              reason_detail=effect.detail)
                case Reindex():
                    self.table.index.move(rec, effect.previous)
                case RemoveClient():
                    self._remove_client(rec, effect, now)
                case AddClient():
                    self._add_client(rec, effect, now)
                case ReleaseLink():
                    link, rec.link = rec.link, None
                    if link is not None:
                        close_transport(link.transport, effect.reason)
                case LoseCommands():
                    if rec.commands:
                        for command in rec.commands.values():
                            if command.state == "pending":
                                command.state = "lost"
                case End():
                    rec.resume_hash = None
                    self.table.finish(rec, now)
                case SendCommand():
                    unreachable = not self._send_command(rec, effect, now)
        output = rec.output
        if output is not None and output.watchers and rec.status is not before:
            output.status(rec.status, rec.reason)  # the attach streams show every transition
        if unreachable:  # the agent's transport failed: it is as good as closed
            self.apply(rec, Change(Input.TRANSPORT_CLOSED), now)
        elif self.journal is not None:
            self.journal.changed(rec)
        return outcome

    def emit(
        self,
        rec: SessionRecord,
        type: str,
        previous: Status | None,
        reason: str | None,
        now: float,
        *,
        status: Status | None = None,
        reason_detail: str | None = None,
        client: EventClient | None = None,
        command: EventCommand | None = None,
    ) -> Event:
        """Append ``type`` to the log: the session as it now is (or in ``status``)."""
        rec.sequence += 1
        data = rec.event_data(self.clock, previous, reason, status, reason_detail, client,
                              command)
        if self.journal is not None:
            self.journal.changed(rec)
        return self.events.append(type, now, rec.workspace_id, rec.session_id, rec.sequence, data)

    # -- effects with more to them -----------------------------------------------------------

    def _add_client(self, rec: SessionRecord, effect: AddClient, now: float) -> None:
        client = effect.client
        if rec.clients is None:
            rec.clients = {}
        rec.clients[client.client_id] = client
        if effect.holder is not None:
            if rec.stream_holders is None:
                rec.stream_holders = {}
            rec.stream_holders[client.client_id] = effect.holder
        rec.version += 1
        self.emit(rec, "session.client_attached", rec.status, None, now,
                  client=_event_client(client))

    def _remove_client(self, rec: SessionRecord, effect: RemoveClient, now: float) -> None:
        assert rec.clients is not None
        client = rec.clients.pop(effect.client_id)
        if rec.stream_holders:
            rec.stream_holders.pop(client.client_id, None)
        rec.version += 1
        self.emit(rec, "session.client_detached", effect.status, effect.reason, now,
                  status=effect.status, client=_event_client(client))
        if rec.output is not None and rec.output.watchers:
            rec.output.client_detached(client.client_id, rec.status)

    def _send_command(self, rec: SessionRecord, effect: SendCommand, now: float) -> bool:
        """Record the command as pending and send it; ``False`` if the transport failed."""
        assert rec.clients is not None
        client = rec.clients[effect.client_id]
        if rec.commands is None:
            rec.commands = {}
        commands = rec.commands
        commands[effect.command_id] = OperatorCommand(
            effect.command_id, effect.command, effect.client_id, client.user_email, now)
        if len(commands) > self.config.history_cap:  # forget the oldest finished one
            for old_id, old in commands.items():
                if old.state != "pending":
                    del commands[old_id]
                    break
        rec.version += 1
        link = rec.link
        assert link is not None  # a CONNECTED session has its link
        try:
            link.transport.send_run_command(RunCommand(
                command_id=effect.command_id, command=effect.command,
                user_email=client.user_email))
        except Exception:
            log.warning("session %s: agent transport failed to send run_command",
                        rec.session_id, exc_info=True)
            return False
        return True
