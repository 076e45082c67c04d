"""tune_gc: the thresholds `tether serve` runs with (measured in benchmarks/load.py)."""

from __future__ import annotations

import gc

import pytest

from tether.http import DEFAULT_GC_YOUNG, tune_gc


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_gc_raises_the_young_threshold_and_freezes_start_up(restore_gc):
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (DEFAULT_GC_YOUNG, 10, 10)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_pythons_thresholds_and_negative_is_refused(restore_gc):
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    with pytest.raises(ValueError, match="young"):
        tune_gc(-1)
