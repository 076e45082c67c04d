"""People at a session: clients attach and detach, and operators' commands go to the agent.

Each write checks what it can before it queues (text, the session being live), then runs in
the session's actor, where the lifecycle core decides (a CONNECTED session only; only an
attached operator's command runs) and its effects do the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ._errors import InvalidParameter
from ._ids import random_id
from ._lifecycle import Attach, Detach, RequestCommand
from ._models import CLIENT_MODES, MAX_COMMAND, MAX_EMAIL, AttachedClient, check_text

if TYPE_CHECKING:
    from ._apply import Applier
    from ._clock import WallClock
    from ._models import ClientMode, CommandView
    from ._record import SessionRecord
    from ._table import SessionTable


class ClientDesk:
    """Attach, detach and run_command, for the engine's public calls of the same names."""

    def __init__(self, table: SessionTable, applier: Applier, clock: WallClock) -> None:
        self.table = table
        self.applier = applier
        self.clock = clock

    async def attach(
        self, workspace_id: str, session_id: str, user_email: str, mode: ClientMode
    ) -> AttachedClient:
        check_text("user_email", user_email, MAX_EMAIL)
        if mode not in CLIENT_MODES:
            raise InvalidParameter("mode", "must be 'operator' or 'observer'")
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED")
        return await actor.call(self._attach, rec, user_email, mode)

    def _attach(self, rec: SessionRecord, user_email: str, mode: ClientMode) -> AttachedClient:
        now = trio.current_time()
        client = AttachedClient(
            client_id=random_id("cli_"),
            user_email=user_email,
            mode=mode,
            attached_at=self.clock.rfc3339(now),
        )
        self.applier.apply(rec, Attach(client), now)
        return client

    async def detach(self, workspace_id: str, session_id: str, client_id: str) -> None:
        rec, actor = self.table.live(workspace_id, session_id)
        await actor.call(self._detach, rec, client_id)

    def _detach(self, rec: SessionRecord, client_id: str) -> None:
        self.applier.apply(rec, Detach(client_id), trio.current_time())

    async def run_command(
        self, workspace_id: str, session_id: str, client_id: str, command: str
    ) -> CommandView:
        check_text("command", command, MAX_COMMAND)
        rec, actor = self.table.live(workspace_id, session_id, "CONNECTED")
        return await actor.call(self._run_command, rec, client_id, command)

    def _run_command(self, rec: SessionRecord, client_id: str, command: str) -> CommandView:
        command_id = random_id("cmd_")
        self.applier.apply(rec, RequestCommand(client_id, command_id, command),
                           trio.current_time())
        return rec.command_view(command_id, self.clock)
