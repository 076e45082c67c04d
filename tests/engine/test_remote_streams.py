"""Attach streams of a session another node runs (``_remote.py``), against a store whose
follower lags: an event must still reach the stream after the output written before it, as
the owner wrote both in one script."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from tether.engine import Engine, OutputChunk, Status, StoredOutput
from tether.engine._record import SessionRecord
from tether.engine._remote import RemoteStreams

from .conftest import hello
from .test_output import Watcher

WS = "ws_acme"


class LaggingStore:
    """A store's output reads: what was written is there to read, but the tail read (``XREAD
    BLOCK``) never returns any of it, as a follower a round trip behind would not yet."""

    def __init__(self) -> None:
        self.chunks: list[OutputChunk] = []

    def write(self, data: bytes) -> None:
        offset = self.chunks[-1].end if self.chunks else 0
        self.chunks.append(OutputChunk(offset, data))

    async def read_output(self, workspace_id: str, session_id: str, offset: int | None,
                          limit: int) -> StoredOutput:
        await trio.lowlevel.checkpoint()
        end = self.chunks[-1].end if self.chunks else 0
        start = offset or 0
        return StoredOutput(0, end, [c for c in self.chunks if c.end > start])

    async def follow_outputs(self, positions: object, wait: float
                             ) -> dict[tuple[str, str], list[OutputChunk]]:
        await trio.sleep(wait)
        return {}


async def test_an_event_reaches_a_remote_stream_after_the_output_before_it(
        engine: Engine, autojump_clock: MockClock) -> None:
    # The session runs in ``engine`` (its events are real); this node's copy of it is a
    # record owned by another node, whose stream is fed from the lagging store.
    link, _ = await hello(engine)
    copy = SessionRecord(link.session_id, WS, "mach_1", "prod-server", 0.0)
    copy.status, copy.owner = Status.CONNECTED, "node-a"
    store = LaggingStore()
    store.write(b"replayed\n")
    watcher = Watcher()
    async with trio.open_nursery() as nursery:
        remote = RemoteStreams(store, engine.events, nursery.start_soon,
                               replay_bytes=64 * 1024)
        start, first, replay, gap = await remote.open(copy, watcher, 0)
        assert (start, first, gap) == (0, 0, None)
        assert b"".join(c.data for c in replay) == b"replayed\n"
        # The owner writes the last output and the end in one script.
        store.write(b"last words\n")
        await link.goodbye("done")
        await trio.sleep(5)
        assert watcher.data == b"last words\n"
        assert watcher.statuses == [(Status.DISCONNECTED, "agent_goodbye")]
        remote.close(copy, watcher)
        assert len(remote) == 0
        nursery.cancel_scope.cancel()  # the tail, which lasts as long as the engine
