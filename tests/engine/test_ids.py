"""Ids: session ids sort in creation order; event ids carry their run and offset."""

from __future__ import annotations

import base64
import random

from tether.engine._ids import EventIds, MonotonicIds, _b32, _Digits, event_id, parse_event_id


def test_fast_base32_matches_the_standard_library() -> None:
    rng = random.Random(7)
    for value in [0, (1 << 120) - 1, *(rng.getrandbits(120) for _ in range(2000))]:
        expected = base64.b32hexencode(value.to_bytes(15, "big")).decode().lower()
        assert _b32(value) == expected


def test_session_ids_sort_in_creation_order_even_within_one_millisecond() -> None:
    ids = MonotonicIds("sess_")
    made = [ids.next(1000 + i // 50) for i in range(500)]
    assert made == sorted(made)
    assert len(set(made)) == 500


def test_event_ids_round_trip() -> None:
    assert parse_event_id(event_id(12345, 678)) == (12345, 678)
    assert parse_event_id("evt_nope") is None
    assert parse_event_id("sess_" + "0" * 23) is None
    assert parse_event_id("evt_" + "!" * 24) is None


def test_ids_made_in_runs_are_the_full_rendering() -> None:
    # _Digits keeps the leading digits between calls: check it across 10-bit boundaries,
    # jumps, a new millisecond and a value going back down.
    rng = random.Random(11)
    digits = _Digits("p_")
    values = [*range(1000, 3100), (1 << 119) + 1023, (1 << 119) + 1024, 5, 6,
              *(rng.getrandbits(120) for _ in range(500))]
    for value in values:
        assert digits.render(value) == "p_" + _b32(value)


def test_a_runs_event_ids_are_event_id() -> None:
    ids = EventIds(987654)
    for offset in [*range(0, 5000), 1 << 40, (1 << 40) + 1]:
        assert ids(offset) == event_id(987654, offset)
