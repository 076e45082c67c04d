"""The engine's containers built for a million sessions behave like what they replace."""

from __future__ import annotations

import trio
from hypothesis import given
from hypothesis import strategies as st

from tether.engine._nurseries import ActorNurseries
from tether.engine._shards import ShardedDict

_ops = st.lists(
    st.tuples(st.sampled_from(["set", "del", "pop", "pop_default"]),
              st.text(max_size=3), st.integers()),
    max_size=200,
)


@given(_ops)
def test_sharded_dict_is_a_dict(ops: list[tuple[str, str, int]]) -> None:
    model: dict[str, int] = {}
    sharded: ShardedDict[str, int] = ShardedDict()
    for op, key, value in ops:
        if op == "set":
            model[key] = value
            sharded[key] = value
        elif op == "pop_default":
            assert sharded.pop(key, -1) == model.pop(key, -1)
        elif key in model:
            if op == "del":
                del model[key]
                del sharded[key]
            else:
                assert sharded.pop(key) == model.pop(key)
        else:
            assert key not in sharded
        assert len(sharded) == len(model)
        assert sharded.get(key) == model.get(key)
    assert sorted(sharded.items()) == sorted(model.items())
    assert sharded.lookup(reversed(list(model))) == [model[k] for k in reversed(list(model))]
    assert sorted(sharded) == sorted(model)
    assert sorted(sharded.values()) == sorted(model.values())


async def test_actor_nurseries_roll_over_and_drain() -> None:
    release = trio.Event()
    finished: list[int] = []

    async def actor(i: int) -> None:
        await release.wait()
        finished.append(i)

    async with trio.open_nursery() as parent:
        pool = ActorNurseries(parent, per_nursery=4)
        await pool.open()
        for i in range(10):
            pool.start_soon(lambda i=i: actor(i))
            await trio.lowlevel.checkpoint()  # the spare opens between starts
        await trio.testing.wait_all_tasks_blocked()
        assert pool.running() == 10
        # No nursery took more than its share: 4 + 4 + 2.
        assert sorted(len(h.nursery.child_tasks) for h in pool._hosts if h.started) == [2, 4, 4]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.running() == 0
        pool.close()
    assert sorted(finished) == list(range(10))
    assert pool.running() == 0


class _Woken:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def resume(self) -> None:
        self.log.append(self.name)


async def test_pacer_wakes_deadlines_first() -> None:
    from tether.engine._pacer import Pacer

    log: list[str] = []
    work: list[int] = []
    pacer = Pacer(batch=3, on_work=work.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer.run)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(4):
            pacer.wake(_Woken(f"news{i}", log))
        pacer.wake(_Woken("due0", log), deadline=True)
        pacer.wake(_Woken("due1", log), deadline=True)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["due0", "due1", "news0", "news1", "news2", "news3"]
        assert work == [3, 3]  # the gc guard is told of the work as it is done, a pass at a time
        assert len(pacer) == 0
        nursery.cancel_scope.cancel()
