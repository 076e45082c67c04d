"""Reads: answered from the read index and the records, never by asking an actor.

Views are rendered from the records at query time. A list page costs O(log n + page) and its
``total`` is exact (``_index.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._errors import InvalidParameter, SessionNotActive
from ._models import PageMeta, SessionPage, Status

if TYPE_CHECKING:
    from ._clock import WallClock
    from ._config import EngineConfig
    from ._models import CommandView, HistoryPage, MachineSession, Metrics, SessionDetail
    from ._table import SessionTable

MAX_PAGE = 100
DEFAULT_PAGE = 20
DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


class Queries:
    """The engine's read calls of the same names."""

    def __init__(self, table: SessionTable, clock: WallClock, config: EngineConfig) -> None:
        self.table = table
        self.clock = clock
        self.config = config

    def list_sessions(
        self,
        workspace_id: str,
        status: Status | str | None,
        machine_id: str | None,
        machine_hostname: str | None,
        limit: int,
        offset: int,
    ) -> SessionPage:
        if status is not None and not isinstance(status, Status):
            try:
                status = Status(status)
            except ValueError:
                raise InvalidParameter(
                    "status", "must be one of " + ", ".join(s.value for s in Status)
                ) from None
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_PAGE}")
        if not isinstance(offset, int) or offset < 0:
            raise InvalidParameter("offset", "must be a non-negative integer")
        total, records = self.table.index.page(
            workspace_id,
            status=status,
            machine_id=machine_id,
            machine_hostname=machine_hostname,
            limit=limit,
            offset=offset,
        )
        clock = self.clock
        return SessionPage(
            data=[rec.summary(clock) for rec in records],
            meta=PageMeta(
                total=total, limit=limit, offset=offset, has_more=offset + len(records) < total
            ),
        )

    def get_session(self, workspace_id: str, session_id: str) -> SessionDetail:
        return self.table.get(workspace_id, session_id).detail(self.clock)

    def machine_session(self, workspace_id: str, machine_id: str) -> MachineSession:
        return self.table.active_session(workspace_id, machine_id).machine_view(self.clock)

    def history(
        self, workspace_id: str, session_id: str, limit: int, before: str | None
    ) -> HistoryPage:
        if not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_HISTORY}")
        rec = self.table.get(workspace_id, session_id)
        return rec.history_page(limit, before, self.config.history_cap)

    def metrics(self, workspace_id: str, session_id: str) -> Metrics:
        rec = self.table.get(workspace_id, session_id)
        if rec.status is not Status.CONNECTED:
            raise SessionNotActive(rec.status.value)
        return rec.metrics(self.clock)

    def get_command(self, workspace_id: str, session_id: str, command_id: str) -> CommandView:
        return self.table.get(workspace_id, session_id).command_view(command_id, self.clock)
