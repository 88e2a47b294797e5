"""nb.Pipeline on in-memory sources: every item acknowledged exactly once, the in-flight bound,
batches, retries, killed processors and batchers (chaos), graceful stop, wait, stats, and
errors. The sources here record what they hand out and get back (`Recording`).

Everything synchronises on messages: a pipeline's summary from `wait`, acknowledgements the
recording source forwards to the test, calls to `stats`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

import pytest
from pipeline_helpers import Recording

import numbeam as nb

T = 10.0  # seconds any single wait may take


class Double(nb.Pipeline):
    async def handle_message(self, item: Any) -> Any:
        if item % 3 == 0:
            await asyncio.sleep(0)  # some items are handled across a scheduling point
        return item * 2


class Collect(Double):
    """Sends each batch's results to the process registered as "pl_test"."""

    async def handle_batch(self, results: list[Any]) -> None:
        nb.send("pl_test", ("batch", list(results)))


async def agen(n: int) -> Any:
    for i in range(n):
        if i % 50 == 0:
            await asyncio.sleep(0)
        yield i


@pytest.mark.parametrize("kind", ["iterable", "async_iterable", "queue"])
async def test_every_item_is_acknowledged_exactly_once(kind: str) -> None:
    async with nb.Runtime():
        n = 2000
        feeder = None
        if kind == "iterable":
            inner: Any = nb.pipeline.from_iterable(range(n))
        elif kind == "async_iterable":
            inner = nb.pipeline.from_async_iterable(agen(n))
        else:
            inner = nb.pipeline.from_queue(maxsize=64)

            async def feed() -> None:
                for i in range(n):
                    await inner.put(i)
                inner.close()

            feeder = asyncio.ensure_future(feed())
        src = Recording(inner)
        pid = await Double.start_link(src, concurrency=3, max_demand=4)
        summary = await nb.pipeline.wait(pid, timeout=T)
        assert summary == {"ok": n, "failed": 0, "retried": 0}
        src.assert_each_once(range(n))
        assert src.max_out <= 3 * 4
        assert not nb.is_alive(pid)
        if feeder is not None:
            await asyncio.wait_for(feeder, T)


async def test_in_flight_bound_with_a_batcher_and_batch_sizes() -> None:
    async with nb.Runtime():
        nb.register("pl_test", nb.self())
        src = Recording(nb.pipeline.from_iterable(range(1050)))
        pid = await Collect.start_link(
            src, concurrency=2, max_demand=5, batch_size=100, batch_timeout=5.0
        )
        summary = await nb.pipeline.wait(pid, timeout=T)
        assert summary == {"ok": 1050, "failed": 0, "retried": 0}
        src.assert_each_once(range(1050))
        sizes, results = [], []
        while True:
            try:
                _, batch = await nb.receive(lambda m: m[0] == "batch", timeout=0)
            except TimeoutError:
                break
            sizes.append(len(batch))
            results += batch
        # full batches, and the last one flushed at the end of the stream, not after 5 s
        assert sizes == [100] * 10 + [50]
        assert sorted(results) == [2 * i for i in range(1050)]
        assert src.max_out <= 2 * 5 + 100


async def test_a_batch_leaves_after_batch_timeout() -> None:
    async with nb.Runtime():
        nb.register("pl_test", nb.self())
        q = nb.pipeline.from_queue(maxsize=10)
        pid = await Collect.start_link(q, concurrency=1, batch_size=100, batch_timeout=0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in (1, 2, 4):
            await q.put(i)
        _, batch = await nb.receive(lambda m: m[0] == "batch", timeout=T)
        assert sorted(batch) == [2, 4, 8]
        assert loop.time() - start >= 0.1
        q.close()
        assert await nb.pipeline.wait(pid, timeout=T) == {"ok": 3, "failed": 0, "retried": 0}


async def test_each_batch_is_a_telemetry_event() -> None:
    async with nb.Runtime():
        me = nb.self()
        nb.register("pl_test", me)
        nb.telemetry.attach(
            "pl-batches", ("numbeam", "pipeline", "batch"), lambda *e: nb.send(me, ("tel", *e))
        )
        try:
            pid = await Collect.start_link(
                nb.pipeline.from_iterable(range(250)), batch_size=100, batch_timeout=5.0
            )
            assert await nb.pipeline.wait(pid, timeout=T) == {"ok": 250, "failed": 0, "retried": 0}
            sizes = []
            for _ in range(3):
                _, event, measured, meta = await nb.receive(lambda m: m[0] == "tel", timeout=T)
                assert event == ("numbeam", "pipeline", "batch")
                assert measured["duration"] >= 0 and measured["system_time"] > 0
                assert meta["pipeline"] == pid and meta["ok"] and meta["error"] is None
                assert type(meta["batcher"]) is nb.Pid
                sizes.append(measured["size"])
            assert sizes == [100, 100, 50]
        finally:
            nb.telemetry.detach("pl-batches")


attempts: Counter[int] = Counter()


class Flaky(nb.Pipeline):
    """Items divisible by 10 always fail; items divisible by 7 fail on their first try."""

    async def handle_message(self, item: int) -> int:
        attempts[item] += 1
        if item % 10 == 0:
            raise ValueError(f"item {item} is bad")
        if item % 7 == 0 and attempts[item] == 1:
            raise RuntimeError("transient")
        return item


async def test_retries_then_failure_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="numbeam")
    attempts.clear()
    async with nb.Runtime():
        src = Recording(nb.pipeline.from_iterable(range(100)))
        pid = await Flaky.start_link(src, concurrency=2, max_retries=2)
        summary = await nb.pipeline.wait(pid, timeout=T)
    bad = [i for i in range(100) if i % 10 == 0]
    flaky = [i for i in range(100) if i % 7 == 0 and i % 10 != 0]
    assert summary == {"ok": 90, "failed": 10, "retried": 2 * len(bad) + len(flaky)}
    src.assert_each_once(range(100))
    assert sorted(src.failed) == bad
    reason = src.failed[30]
    assert isinstance(reason, ValueError) and str(reason) == "item 30 is bad"
    assert all(attempts[i] == 3 for i in bad) and all(attempts[i] == 2 for i in flaky)
    logged = [r for r in caplog.records if "failed after 3 attempt(s)" in r.getMessage()]
    assert len(logged) == 10  # each failure logged once


class Chaos(nb.Pipeline):
    async def handle_message(self, item: int) -> int:
        live.add(nb.self())
        if item % 5 == 0:
            await asyncio.sleep(0)  # so that some kills land in the middle of a chunk
        return item


live: set[nb.Pid] = set()


async def test_chaos_100_processor_kills_lose_nothing_and_ack_nothing_twice() -> None:
    rng = random.Random(13)
    kills = []

    def kill_one(src: Recording) -> None:
        alive = sorted((p for p in live if nb.is_alive(p)), key=repr)
        if len(kills) < 100 and alive and rng.random() < 0.5:
            victim = rng.choice(alive)
            live.discard(victim)
            nb.exit(victim, "kill")
            kills.append(victim)

    live.clear()
    async with nb.Runtime():
        n = 20_000
        src = Recording(nb.pipeline.from_iterable(range(n)))
        src.on_ack = kill_one  # at random acknowledgements: a kill, from the pipeline itself
        pid = await Chaos.start_link(src, concurrency=4, max_demand=10)
        summary = await nb.pipeline.wait(pid, timeout=30)
        assert len(kills) == 100, f"only {len(kills)} kills in {src.ack_calls} acks"
        src.assert_each_once(range(n))
        assert summary["ok"] == n and summary["failed"] == 0
        assert summary["retried"] > 0  # the killed processors' items were run again
        assert src.max_out <= 4 * 10


class Slow(nb.Pipeline):
    async def handle_message(self, item: int) -> int:
        nb.send("pl_test", ("started", item))
        await nb.receive(lambda m: m == "go")  # held until the test lets it go
        return item


async def call_stop(pid: nb.Pid, parent: nb.Pid) -> None:
    nb.send(parent, ("stopped", await nb.pipeline.stop(pid, timeout=T)))


async def test_stop_drains_in_flight_items_and_acknowledges_them() -> None:
    async with nb.Runtime():
        nb.register("pl_test", nb.self())
        q = nb.pipeline.from_queue(maxsize=100)
        for i in range(50):
            q.put_nowait(i)
        src = Recording(q)
        pid = await Slow.start_link(src, concurrency=2, max_demand=2)
        first = [await nb.receive(lambda m: m[0] == "started", timeout=T) for _ in range(2)]
        procs = (await nb.pipeline.stats(pid))["processors"]
        nb.spawn(call_stop, pid, nb.self())
        # While it drains, let the processors go one item at a time.
        ref = nb.monitor(pid)
        started = [m[1] for m in first]
        while True:
            for p in procs:
                nb.send(p, "go")
            msg = await nb.receive(
                lambda m: (
                    (type(m) is tuple and m[0] == "started")
                    or (type(m) is nb.Down and m.ref == ref)
                ),
                timeout=T,
            )
            if type(msg) is nb.Down:
                assert msg.reason == "normal"
                break
            started.append(msg[1])
        _, summary = await nb.receive(lambda m: m[0] == "stopped", timeout=T)
        assert summary["ok"] == src.fetched and summary["failed"] == 0
        assert src.fetched <= 2 * 2 + 2  # it fetched no more once stopping
        src.assert_each_once(range(src.fetched))
        assert len(q) == 50 - src.fetched  # the rest were never taken
        assert sorted(started) == list(range(src.fetched))
        # and a late wait still gets the summary
        assert await nb.pipeline.wait(pid) == summary


async def test_killed_batcher_hands_its_results_to_the_next_one() -> None:
    async with nb.Runtime():
        nb.register("pl_test", nb.self())
        q = nb.pipeline.from_queue(maxsize=10)
        src = Recording(q)
        pid = await Collect.start_link(src, concurrency=1, batch_size=3, batch_timeout=60)
        await q.put(1)
        await q.put(2)
        # both results reach the batcher, which waits for a third
        for _ in range(10_000):  # each stats call is a round trip to the pipeline
            if (await nb.pipeline.stats(pid))["stages"]["batcher"]["in_flight"] == 2:
                break
        else:
            raise AssertionError("the two results never reached the batcher")
        [batcher] = (await nb.pipeline.stats(pid))["batchers"]
        nb.exit(batcher, "kill")
        await q.put(3)
        _, batch = await nb.receive(lambda m: m[0] == "batch", timeout=T)
        assert sorted(batch) == [2, 4, 6]
        q.close()
        summary = await nb.pipeline.wait(pid, timeout=T)
        assert summary == {"ok": 3, "failed": 0, "retried": 2}
        src.assert_each_once([1, 2, 3])
        assert (await nb.pipeline.wait(pid))["ok"] == 3


async def test_stats_counts_and_throughput() -> None:
    async with nb.Runtime():
        src = Recording(nb.pipeline.from_iterable(range(500)))
        pid = await Double.start_link(src, concurrency=2, name="doubler")
        st = await nb.pipeline.stats("doubler")
        assert {"fetched", "in_flight", "ok", "failed", "retried", "stages"} <= set(st)
        assert len(st["processors"]) == 2 and st["batchers"] == []
        assert st["bound"] == 2 * 10
        await nb.pipeline.wait(pid, timeout=T)
        with pytest.raises(nb.NoProc):
            await nb.pipeline.stats(pid)


async def test_as_a_supervisor_child() -> None:
    async with nb.Runtime():
        src = Recording(nb.pipeline.from_iterable(range(100)))
        sup = await nb.Supervisor.start_link(
            [
                nb.Child(
                    Double,
                    args=(src,),
                    kwargs={"concurrency": 2, "name": "supervised"},
                    restart="transient",
                )
            ]
        )
        [(_, pid, kind)] = await nb.Supervisor.which_children(sup)
        assert kind == "worker" and pid == nb.whereis("supervised")
        assert (await nb.pipeline.wait(pid, timeout=T))["ok"] == 100
        src.assert_each_once(range(100))
        assert nb.is_alive(sup)
        assert (await nb.Supervisor.count_children(sup))["active"] == 0


async def test_bad_arguments_are_named() -> None:
    async with nb.Runtime():
        src = nb.pipeline.from_iterable([1])
        with pytest.raises(TypeError, match="async fetch"):
            await Double.start_link([1, 2, 3])
        with pytest.raises(ValueError, match="concurrency=0"):
            await Double.start_link(src, concurrency=0)
        with pytest.raises(TypeError, match="max_demand"):
            await Double.start_link(src, max_demand=1.5)
        with pytest.raises(ValueError, match="unknown device 'fake:3'"):
            await Double.start_link(src, devices=["fake:3"])
        with pytest.raises(TypeError, match="handle_message"):
            await nb.Pipeline.start_link(src)
        with pytest.raises(TypeError, match="iterable"):
            nb.pipeline.from_iterable(5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="maxsize"):
            nb.pipeline.from_queue(0)
        q = nb.pipeline.from_queue(1)
        q.close()
        with pytest.raises(ValueError, match="closed"):
            await q.put(1)
        with pytest.raises(nb.NoProc):
            await nb.pipeline.wait("nothing-here")
        nb.register("taken", nb.self())
        with pytest.raises(nb.StartError, match="already taken") as err:
            await Double.start_link(src, name="taken")
        assert err.value.reason == ("already_started", nb.self())
        assert nb.processes() == [nb.self()]


class Exploding:
    async def fetch(self, demand: int) -> list[Any]:
        raise OSError("the broker went away")

    async def ack(self, ok_items: list[Any], failed: list[Any]) -> None:
        pass


async def test_a_failing_source_crashes_the_pipeline(crash_log: Any) -> None:
    async with nb.Runtime():
        pid = await Double.start(Exploding())
        with pytest.raises(nb.CallError) as err:
            await nb.pipeline.wait(pid, timeout=T)
        assert isinstance(err.value.reason, OSError)


async def test_its_supervisor_shutting_it_down_drains_first() -> None:
    """The parent's exit signal (a supervisor stopping its child) is trapped: the pipeline
    stops fetching, acknowledges what it had, and exits with the parent's reason."""
    async with nb.Runtime():
        q = nb.pipeline.from_queue(maxsize=100)
        for i in range(30):
            q.put_nowait(i)
        src = Recording(q)
        sup = await nb.Supervisor.start_link(
            [nb.Child(Double, args=(src,), kwargs={"concurrency": 2}, id="p")]
        )
        [(_, pid, _)] = await nb.Supervisor.which_children(sup)
        for _ in range(10_000):  # each stats call is a round trip to the pipeline
            if (await nb.pipeline.stats(pid))["fetched"]:
                break
        ref = nb.monitor(pid)
        await nb.Supervisor.terminate_child(sup, "p")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "shutdown"
        assert src.fetched > 0 and src.out == 0  # whatever it took, it acknowledged
        src.assert_each_once(range(src.fetched))
        assert len(q) == 30 - src.fetched
