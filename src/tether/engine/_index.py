"""The read index: list queries answered without asking any actor.

Sessions are kept in creation order, which is (created_at, session_id) order because session
ids sort by creation (see ``_ids.py``). Per workspace there is an ordered index of all sessions
and one per status (``SortedList`` of ids: O(log n) to move a session between statuses,
O(log n + page) to slice a page); per machine and per hostname the records themselves in
creation order (they are few, and their membership only changes on creation and purge; a
machine's one session is kept as a 1-tuple, smaller than a list). The map by machine is keyed
by (workspace, machine) and split by key hash (a ``ShardedDict``: it holds an entry per
machine, a million of them in the benchmark's one workspace, and a plain dict's resize at that
size stalled the loop ~100 ms). Its newest record is the machine's active session while it is
live, since a machine's next session starts only once the previous one has ended: the session
table asks it, so no second map has to agree with it. A page with one filter is a
slice; a page with several filters scans the smallest matching index, so ``total`` stays exact.
Holding records there, not ids, spares that scan a lookup per session (1,000 of them per
hostname at a million sessions).

The newest session is filed under its status lazily, at the index's next operation: a hello
creates a session and connects it at once, so it is filed once, as CONNECTED, instead of
being filed as PENDING and moved straight away. Nothing outside sees the difference: every
read and write of the index files it first.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedList

from ._shards import ShardedDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from ._models import Status
    from ._record import SessionRecord


#: Records in creation order: a 1-tuple for the common single session, else a list.
_Recs = tuple["SessionRecord"] | list["SessionRecord"]


class _Workspace:
    __slots__ = ("all", "by_host", "by_status")

    def __init__(self) -> None:
        self.all = SortedList()
        self.by_status: dict[Status, SortedList] = {}
        self.by_host: dict[str, _Recs] = {}


def _append(
    table: dict[str, _Recs] | ShardedDict[tuple[str, str], _Recs],
    key: Any,
    rec: SessionRecord,
) -> None:
    # Records are added in creation order, so appending keeps these ordered; one another node
    # created may be older than this node's newest (session ids order by creation).
    items = table.get(key)
    if items is None:
        table[key] = (rec,)
        return
    if isinstance(items, tuple):
        items = table[key] = list(items)
    if items[-1].session_id < rec.session_id:
        items.append(rec)
    else:
        insort(items, rec, key=_session_id)


def _session_id(rec: SessionRecord) -> str:
    return rec.session_id


def _remove(
    table: dict[str, _Recs] | ShardedDict[tuple[str, str], _Recs],
    key: Any,
    rec: SessionRecord,
) -> None:
    items = table[key]
    if isinstance(items, tuple):
        if items[0] is rec:
            del table[key]
        return
    i = bisect_left(items, rec.session_id, key=_session_id)
    if i < len(items) and items[i] is rec:
        del items[i]
    if not items:
        del table[key]


class ReadIndex:
    """Secondary indexes by workspace, status, machine_id and machine_hostname."""

    def __init__(self, records: ShardedDict[str, SessionRecord]) -> None:
        self._records = records
        self._workspaces: dict[str, _Workspace] = {}
        self._by_machine: ShardedDict[tuple[str, str], _Recs] = ShardedDict()
        self._unfiled: SessionRecord | None = None  # the newest session, not yet by status

    def add(self, rec: SessionRecord) -> None:
        self._file_status()
        ws = self._workspaces.get(rec.workspace_id)
        if ws is None:
            ws = self._workspaces[rec.workspace_id] = _Workspace()
        sid = rec.session_id
        ws.all.add(sid)
        _append(self._by_machine, (rec.workspace_id, rec.machine_id), rec)
        _append(ws.by_host, rec.machine_hostname, rec)
        self._unfiled = rec

    def move(self, rec: SessionRecord, old_status: Status) -> None:
        """Re-file ``rec`` after its status changed from ``old_status``."""
        if rec is self._unfiled:
            return  # it is filed under the status it has when it is filed
        ws = self._workspaces[rec.workspace_id]
        ws.by_status[old_status].remove(rec.session_id)
        self._status_list(ws, rec.status).add(rec.session_id)

    def remove(self, rec: SessionRecord) -> None:
        self._file_status()
        ws = self._workspaces[rec.workspace_id]
        sid = rec.session_id
        ws.all.discard(sid)
        ws.by_status[rec.status].discard(sid)
        _remove(self._by_machine, (rec.workspace_id, rec.machine_id), rec)
        _remove(ws.by_host, rec.machine_hostname, rec)

    def live_of(self, workspace_id: str, machine_id: str) -> SessionRecord | None:
        """The machine's live session, if any (see :meth:`_live_in`)."""
        recs = self._by_machine.get((workspace_id, machine_id))
        return None if recs is None else _live_in(recs)

    def live_of_each_machine(self) -> Iterator[SessionRecord]:
        for recs in self._by_machine.values():
            rec = _live_in(recs)
            if rec is not None:
                yield rec

    def _file_status(self) -> None:
        rec = self._unfiled
        if rec is not None:
            self._unfiled = None
            ws = self._workspaces[rec.workspace_id]
            self._status_list(ws, rec.status).add(rec.session_id)

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
        self._file_status()
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            return 0, []
        by_record: list[Sequence[SessionRecord]] = []
        if machine_id is not None:
            by_record.append(self._by_machine.get((workspace_id, machine_id), ()))
        if machine_hostname is not None:
            by_record.append(ws.by_host.get(machine_hostname, ()))
        ids = None if status is None else ws.by_status.get(status, ())
        if not by_record:
            return self._slice(ws.all if ids is None else ids, limit, offset)
        records = min(by_record, key=len)
        if ids is None and len(by_record) == 1:  # one filter: a slice of its records
            total = len(records)
            stop = max(0, total - offset)
            return total, list(reversed(records[max(0, stop - limit) : stop]))
        scan: Iterable[SessionRecord] = (
            reversed(records) if ids is None or len(records) <= len(ids)
            else self._records.lookup(reversed(ids))
        )
        keep = self._predicate(status, machine_id, machine_hostname)
        matched = [rec for rec in scan if keep(rec)]
        return len(matched), matched[offset : offset + limit]

    def _slice(
        self, ids: Sequence[str], limit: int, offset: int
    ) -> tuple[int, list[SessionRecord]]:
        """A page of an index of ids, newest first (SortedList slices in O(log n + k))."""
        total = len(ids)
        stop = total - offset
        if stop <= 0:
            return total, []
        return total, self._records.lookup(reversed(ids[max(0, stop - limit) : stop]))

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


#: How many of a machine's newest sessions may be live. One, except for a moment after hellos
#: for the machine raced on nodes sharing a store: each node started a session and the older
#: ones are being replaced; those were created within milliseconds, so they are the newest few.
_RACING = 4


def _live_in(recs: Sequence[SessionRecord]) -> SessionRecord | None:
    """The live one of a machine's sessions (oldest first): the newest live among the last
    few, which is the one its machine's store map names once a race is settled."""
    for rec in reversed(recs[-_RACING:]):
        if not rec.status.final:
            return rec
    return None
