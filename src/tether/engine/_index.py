"""The read index: list queries answered without asking any actor.

Sessions are kept in creation order, which is (created_at, session_id) order because session
ids sort by creation (see ``_ids.py``). Per workspace there is an ordered index of all sessions
and one per status (``SortedList``: O(log n) to move a session between statuses, O(log n + page)
to slice a page); per machine and per hostname a plain list in creation order (they are small,
and their membership only changes on creation and purge). A page with one filter is a slice; a
page with several filters scans the smallest matching index, so ``total`` stays exact.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

from sortedcontainers import SortedList

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._models import Status
    from ._record import SessionRecord


class _Workspace:
    __slots__ = ("all", "by_host", "by_machine", "by_status")

    def __init__(self) -> None:
        self.all = SortedList()
        self.by_status: dict[Status, SortedList] = {}
        self.by_machine: dict[str, list[str]] = {}
        self.by_host: dict[str, list[str]] = {}


def _remove_sorted(items: list[str], session_id: str) -> None:
    i = bisect_left(items, session_id)
    if i < len(items) and items[i] == session_id:
        del items[i]


class ReadIndex:
    """Secondary indexes by workspace, status, machine_id and machine_hostname."""

    def __init__(self, records: dict[str, SessionRecord]) -> None:
        self._records = records
        self._workspaces: dict[str, _Workspace] = {}

    def add(self, rec: SessionRecord) -> None:
        ws = self._workspaces.get(rec.workspace_id)
        if ws is None:
            ws = self._workspaces[rec.workspace_id] = _Workspace()
        sid = rec.session_id
        ws.all.add(sid)
        self._status_list(ws, rec.status).add(sid)
        # Ids sort by creation, so appending keeps these lists ordered.
        ws.by_machine.setdefault(rec.machine_id, []).append(sid)
        ws.by_host.setdefault(rec.machine_hostname, []).append(sid)

    def move(self, rec: SessionRecord, old_status: Status) -> None:
        """Re-file ``rec`` after its status changed from ``old_status``."""
        ws = self._workspaces[rec.workspace_id]
        ws.by_status[old_status].remove(rec.session_id)
        self._status_list(ws, rec.status).add(rec.session_id)

    def remove(self, rec: SessionRecord) -> None:
        ws = self._workspaces[rec.workspace_id]
        sid = rec.session_id
        ws.all.discard(sid)
        ws.by_status[rec.status].discard(sid)
        for table, key in ((ws.by_machine, rec.machine_id), (ws.by_host, rec.machine_hostname)):
            items = table[key]
            _remove_sorted(items, sid)
            if not items:
                del table[key]

    def page(
        self,
        workspace_id: str,
        *,
        status: Status | None,
        machine_id: str | None,
        machine_hostname: str | None,
        limit: int,
        offset: int,
    ) -> tuple[int, list[SessionRecord]]:
        """``(total, records)``: the matching sessions, newest first, from ``offset``."""
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            return 0, []
        candidates: list[Sequence[str]] = []
        if machine_id is not None:
            candidates.append(ws.by_machine.get(machine_id, ()))
        if machine_hostname is not None:
            candidates.append(ws.by_host.get(machine_hostname, ()))
        if status is not None:
            candidates.append(ws.by_status.get(status, ()))
        if not candidates:
            return self._slice(ws.all, limit, offset)
        ids = min(candidates, key=len)
        if len(candidates) == 1:
            return self._slice(ids, limit, offset)
        keep = self._predicate(status, machine_id, machine_hostname)
        matched = [rec for rec in map(self._records.__getitem__, reversed(ids)) if keep(rec)]
        return len(matched), matched[offset : offset + limit]

    def _slice(
        self, ids: Sequence[str], limit: int, offset: int
    ) -> tuple[int, list[SessionRecord]]:
        """A page of one index, newest first: a slice (SortedList slices in O(log n + k))."""
        total = len(ids)
        stop = total - offset
        if stop <= 0:
            return total, []
        records = self._records
        return total, [records[sid] for sid in reversed(ids[max(0, stop - limit) : stop])]

    @staticmethod
    def _predicate(
        status: Status | None, machine_id: str | None, machine_hostname: str | None
    ) -> Callable[[SessionRecord], bool]:
        def keep(rec: SessionRecord) -> bool:
            return (
                (status is None or rec.status is status)
                and (machine_id is None or rec.machine_id == machine_id)
                and (machine_hostname is None or rec.machine_hostname == machine_hostname)
            )

        return keep

    @staticmethod
    def _status_list(ws: _Workspace, status: Status) -> SortedList:
        found = ws.by_status.get(status)
        if found is None:
            found = ws.by_status[status] = SortedList()
        return found
