"""The output buffer against a model: the whole stream as one bytes object.

Hypothesis writes text (multi-byte characters included) in pieces at exact, stale (a resend)
and future (a gap) offsets, with a small retention bound, and reads every way there is; every
answer must be the model's bytes at those offsets, cut on character boundaries.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.engine import OutputChunk, OutputGap, OutputGone
from tether.engine._output import OutputBuffer, OutputMemory

TEXT = st.text(alphabet=st.sampled_from("ab\n\té€😀\x1b"), min_size=0, max_size=12)


def _whole(chunks: list[OutputChunk]) -> bytes:
    return b"".join(c.data for c in chunks)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=4, max_value=64),
    writes=st.lists(st.tuples(TEXT, st.integers(min_value=-8, max_value=3),
                              st.sampled_from(["stdout", "stderr"])), max_size=40),
    reads=st.lists(st.tuples(st.integers(min_value=0, max_value=400),
                             st.integers(min_value=1, max_value=40)), max_size=10),
)
def test_the_buffer_is_the_streams_retained_tail(
    limit: int, writes: list[tuple[str, int, str]], reads: list[tuple[int, int]]
) -> None:
    buffer = OutputBuffer(limit)
    stream = b""  # the model: everything ever appended
    for text, shift, kind in writes:
        if shift < 0:  # a resend of bytes it has (the agent's own, so the same), and more
            offset = _boundary(stream, max(0, len(stream) + shift))
            data = stream[offset:] + text.encode()
        else:  # at the next offset, or beyond it (a gap)
            offset, data = len(stream) + shift, text.encode()
        if offset > len(stream):
            with pytest.raises(OutputGap) as gap:
                buffer.append(offset, data, kind)  # type: ignore[arg-type]
            assert gap.value.expected_offset == len(stream)
            continue
        buffer.append(offset, data, kind)  # type: ignore[arg-type]
        stream = stream[:offset] + data if offset + len(data) > len(stream) else stream
        assert buffer.next_offset == len(stream)
        assert buffer.size <= limit
        assert buffer.size == len(stream) - buffer.first_offset
        # what is kept is the newest bytes, whole characters, within a character of the bound
        kept = _whole(buffer.chunks_from(buffer.first_offset))
        assert kept == stream[buffer.first_offset:]
        kept.decode()
        assert len(stream) - buffer.first_offset > limit - 4 or buffer.first_offset == 0
    for offset, size in reads:
        if offset < buffer.first_offset:
            with pytest.raises(OutputGone) as gone:
                buffer.read(offset, size)
            assert gone.value.first_offset == buffer.first_offset
            continue
        found = buffer.read(offset, size)
        start = _boundary(stream, min(offset, len(stream)))
        assert found.offset == start
        assert found.data == stream[start:found.next_offset]
        assert len(found.data) <= size
        assert len(found.data) > size - 4 or found.next_offset == len(stream)
        found.data.decode()  # whole characters only
        assert _whole(buffer.chunks_from(offset)) == stream[start:]


def _boundary(data: bytes, i: int) -> int:
    while i < len(data) and data[i] & 0xC0 == 0x80:
        i += 1
    return i


def test_consecutive_writes_are_kept_as_one_chunk_but_told_one_by_one() -> None:
    told: list[OutputChunk] = []

    class Watcher:
        def output(self, chunk: OutputChunk) -> None:
            told.append(chunk)

    buffer = OutputBuffer(1 << 20)
    buffer.watchers.add(Watcher())  # type: ignore[arg-type]
    for i in range(100):
        buffer.append(i * 3, b"ab\n")
    buffer.append(300, b"err", "stderr")
    assert [c.offset for c in told] == [i * 3 for i in range(100)] + [300]
    chunks = buffer.chunks_from(0)
    assert len(chunks) == 2
    assert (chunks[1].stream, chunks[1].offset) == ("stderr", 300)
    assert buffer.chunks_from(150)[0] == OutputChunk(150, b"ab\n" * 50, "stdout", None)


def test_a_full_process_budget_sheds_the_largest_buffers_first() -> None:
    memory = OutputMemory(1600)
    big = OutputBuffer(1000, memory)
    middle = OutputBuffer(1000, memory)
    small = OutputBuffer(1000, memory)
    big.append(0, b"x" * 900)
    middle.append(0, b"y" * 500)
    small.append(0, b"z" * 100)
    assert memory.total == 1500 and memory.sheddings == 0
    small.append(100, b"z" * 150)  # 1650 > 1600: shed down to 1500 (a sixteenth below)
    assert memory.sheddings == 1
    assert memory.total <= 1500
    assert small.size == 250  # the smallest keeps everything
    assert middle.size == 500
    assert big.size == memory.total - 750
    assert big.next_offset == 900 and big.first_offset == 900 - big.size
    big.release()
    assert memory.total == 750 and big not in memory.buffers


def test_shedding_levels_the_largest_buffers() -> None:
    memory = OutputMemory(2000)
    buffers = [OutputBuffer(10_000, memory) for _ in range(4)]
    for buffer, size in zip(buffers, (800, 700, 300, 100), strict=True):
        buffer.append(0, b"." * size)
    buffers[3].append(100, b"." * 200)  # 2100: shed to 1875
    sizes = [b.size for b in buffers]
    assert sum(sizes) <= 1875
    assert sizes[2:] == [300, 300]
    assert sizes[0] == sizes[1]  # both largest came down to one level
