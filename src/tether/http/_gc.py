"""The cyclic garbage collector, tuned for a server holding thousands of sockets.

With Python's default threshold (a young collection every 700 net allocations) a server busy
with 3,000 agents spent ~45% of its time collecting and ran a ~1 s full collection in every
few seconds of saturation: each young collection catches frames still queued, promotes them,
and the promoted count soon triggers a full collection of every connection's objects.
Collecting the young generation every 50,000 allocations instead let it ingest ~2x the frames
per second (9.7k -> 19.3k/s) with ~5% of its time in the collector, no full collections in the
rounds, and the same memory (``benchmarks/README.md``, ``## load``). Garbage without cycles is
freed by reference counting either way; only cycles wait for a collection, and 50,000 young
objects are a few MB at most.
"""

from __future__ import annotations

import gc

#: ``tether serve --gc-young``: net allocations between young collections (Python's: 700).
DEFAULT_GC_YOUNG = 50_000


def tune_gc(young: int = DEFAULT_GC_YOUNG) -> None:
    """Collect the young generation every ``young`` allocations (``0``: keep Python's
    thresholds), and freeze what start-up allocated so that collections never scan it again.

    For a server process about to serve, once its modules are imported and its app built;
    a library embedding the engine leaves the collector to its host.
    """
    if young < 0:
        raise ValueError("young must be 0 (keep Python's thresholds) or a positive count")
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    if young:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young, older, oldest)
