"""Ids: session ids sort in creation order; event ids carry their run and offset."""

from __future__ import annotations

import base64
import random

from tether.engine._ids import MonotonicIds, _b32, event_id, parse_event_id


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
