"""The read index against a model: every page is what filtering all sessions would give.

The index files the newest session under its status lazily, and keeps a machine's one session
as a 1-tuple; Hypothesis drives adds, status moves (often straight after an add, as a hello
does), purges and pages in any order, and each page is checked against a plain scan.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.engine import Status
from tether.engine._index import ReadIndex
from tether.engine._record import SessionRecord
from tether.engine._shards import ShardedDict

WORKSPACES = ["ws_a", "ws_b"]
MACHINES = ["m1", "m2", "m3"]
HOSTS = ["h1", "h2"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(WORKSPACES), st.sampled_from(MACHINES),
                  st.sampled_from(HOSTS)),
        st.tuples(st.just("move"), st.integers(0, 10**6), st.sampled_from(list(Status))),
        st.tuples(st.just("remove"), st.integers(0, 10**6)),
        st.tuples(st.just("page"), st.sampled_from(WORKSPACES),
                  st.one_of(st.none(), st.sampled_from(list(Status))),
                  st.one_of(st.none(), st.sampled_from(MACHINES)),
                  st.one_of(st.none(), st.sampled_from(HOSTS)),
                  st.integers(1, 5), st.integers(0, 6)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_pages_match_a_scan_of_every_session(ops: list[tuple]) -> None:
    records: ShardedDict[str, SessionRecord] = ShardedDict()
    index = ReadIndex(records)
    made = 0
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, ws, machine, host = op
            rec = SessionRecord(f"sess_{made:06d}", ws, machine, host, float(made))
            made += 1
            records[rec.session_id] = rec
            index.add(rec)
        elif kind == "move" and records:
            rec = list(records.values())[op[1] % len(records)]
            old, rec.status = rec.status, op[2]
            if rec.status is not old:
                index.move(rec, old)
        elif kind == "remove" and records:
            rec = records.pop(sorted(records)[op[1] % len(records)])
            index.remove(rec)
        elif kind == "page":
            _, ws, status, machine, host, limit, offset = op
            total, page = index.page(ws, status=status, machine_id=machine,
                                     machine_hostname=host, limit=limit, offset=offset)
            matching = [
                rec for sid, rec in sorted(records.items(), reverse=True)
                if rec.workspace_id == ws
                and (status is None or rec.status is status)
                and (machine is None or rec.machine_id == machine)
                and (host is None or rec.machine_hostname == host)
            ]
            assert total == len(matching)
            assert page == matching[offset:offset + limit]
