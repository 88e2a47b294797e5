"""nb.Serving on one node: batching under concurrency, the batch timeout, failures that stay in
their batch or request, overload, withdrawal on timeout, and a serving killed mid-batch and
restarted by its supervisor. Everything synchronises on messages (callers report back, a
blocking `predict` says when it started); every wait is bounded."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import numpy as np
import pytest

import numbeam as nb

T = 10.0
W = np.arange(32, dtype=np.float64).reshape(8, 4) / 10


def mlp(batch: np.ndarray) -> np.ndarray:
    if (batch < 0).any():
        raise ArithmeticError(f"negative input in a batch of {len(batch)}")
    return np.tanh(batch @ W)


# An async predict that tells `GATE["to"]` it started and waits for `GATE["open"]`.
GATE: dict[str, Any] = {}


async def gated(batch: np.ndarray) -> np.ndarray:
    nb.send(GATE["to"], ("started", len(batch)))
    await GATE["open"].wait()
    return batch * 2


def gate(to: nb.Pid) -> asyncio.Event:
    GATE["to"], GATE["open"] = to, asyncio.Event()
    return GATE["open"]


async def caller(parent: nb.Pid, tag: Any, name: str, x: Any, timeout: float = T) -> None:
    """Run one request; report ``(tag, "ok", row)`` or ``(tag, "error", exception)``."""
    try:
        nb.send(parent, (tag, "ok", await nb.serving.run(name, x, timeout=timeout)))
    except Exception as e:
        nb.send(parent, (tag, "error", e))


async def results(tags: list[Any]) -> dict[Any, tuple[str, Any]]:
    got = {}
    for _ in tags:
        tag, kind, value = await nb.receive(lambda m: type(m) is tuple and m[0] in tags, timeout=T)
        got[tag] = (kind, value)
    return got


async def test_concurrent_callers_each_get_their_own_row_in_batches() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=32, batch_timeout=0.02)
        xs = [np.full(8, i / 1000) for i in range(1000)]
        for i, x in enumerate(xs):
            nb.spawn(caller, nb.self(), i, "mlp", x)
        got = await results(list(range(1000)))
        for i, x in enumerate(xs):
            kind, row = got[i]
            assert kind == "ok" and np.allclose(row, np.tanh(x @ W)), (i, got[i])
        stats = await nb.serving.stats("mlp")
        assert stats["requests"] == 1000 and stats["inputs"] == 1000
        assert max(stats["batch_sizes"]) <= 32
        assert stats["mean_batch_size"] > 1
        assert sum(n * c for n, c in stats["batch_sizes"].items()) == 1000
        assert stats["queue_length"] == 0 and 0 < stats["p50_latency"] <= stats["p99_latency"]


async def test_each_batch_is_a_telemetry_event() -> None:
    async with nb.Runtime():
        me = nb.self()
        nb.telemetry.attach(
            "batches", ("numbeam", "serving", "batch"), lambda *e: nb.send(me, ("tel", *e))
        )
        try:
            pid = await nb.Serving.start_link(mlp, name="mlp", batch_size=4, batch_timeout=0.02)
            rows = await nb.serving.run_batch("mlp", [np.full(8, 0.1)] * 4, timeout=T)
            assert len(rows) == 4
            _, event, measured, meta = await nb.receive(lambda m: m[0] == "tel", timeout=T)
            assert event == ("numbeam", "serving", "batch")
            assert measured["size"] == 4 and measured["duration"] > 0
            assert measured["queue_length"] == 0
            assert meta["name"] == "mlp" and meta["serving"] == pid and meta["partition"] == 0
            assert meta["ok"] and meta["error"] is None and meta["device"] is None
            with pytest.raises(ArithmeticError):
                await nb.serving.run("mlp", np.full(8, -1.0), timeout=T)  # fails its batch
            _, _, measured, meta = await nb.receive(lambda m: m[0] == "tel", timeout=T)
            assert measured["size"] == 1 and not meta["ok"]
            assert isinstance(meta["error"], ArithmeticError)
        finally:
            nb.telemetry.detach("batches")


async def test_a_lone_request_leaves_after_batch_timeout() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=64, batch_timeout=0.1)
        start = time.monotonic()
        row = await nb.serving.run("mlp", np.ones(8), timeout=T)
        took = time.monotonic() - start
        assert np.allclose(row, np.tanh(np.ones(8) @ W))
        assert 0.1 <= took < 2.0
        assert (await nb.serving.stats("mlp"))["batch_sizes"] == {1: 1}


async def test_run_batch_splits_into_batches_and_keeps_the_order() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=16, batch_timeout=0.05)
        xs = [np.full(8, i / 100) for i in range(40)]
        rows = await nb.serving.run_batch("mlp", xs, timeout=T)
        assert all(np.allclose(r, np.tanh(x @ W)) for r, x in zip(rows, xs, strict=True))
        assert (await nb.serving.stats("mlp"))["batch_sizes"] == {8: 1, 16: 2}
        assert await nb.serving.run_batch("mlp", []) == []


async def test_an_exception_in_predict_reaches_exactly_the_callers_of_its_batch() -> None:
    async with nb.Runtime():
        # A batch leaves only when full: the 4 callers of each round share one batch.
        await nb.Serving.start_link(mlp, name="mlp", batch_size=4, batch_timeout=60.0)
        rounds = {"good": [1, 2, 3, 4], "bad": [5, -6, 7, 8], "after": [9, 10, 11, 12]}
        for kind, values in rounds.items():
            for v in values:
                nb.spawn(caller, nb.self(), (kind, v), "mlp", np.full(8, float(v)))
            got = await results([(kind, v) for v in values])
            if kind == "bad":
                for v in values:
                    outcome, err = got[(kind, v)]
                    assert outcome == "error" and isinstance(err, ArithmeticError)
                    assert str(err) == "negative input in a batch of 4"
            else:
                assert all(outcome == "ok" for outcome, _ in got.values())
        stats = await nb.serving.stats("mlp")
        assert stats["batches"] == 3 and stats["failed"] == 4 and stats["requests"] == 8


async def test_a_bad_input_fails_alone() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=4, batch_timeout=60.0)
        inputs = {0: np.ones(8), 1: np.ones(3), 2: np.ones(8), 3: np.ones(8, np.float32)}
        for tag, x in inputs.items():
            nb.spawn(caller, nb.self(), tag, "mlp", x)
        got = await results(list(inputs))
        assert got[0][0] == got[2][0] == "ok"
        for tag, what in ((1, r"array float64\[3\]"), (3, r"array float32\[8\]")):
            kind, err = got[tag]
            assert kind == "error" and isinstance(err, ValueError)
            assert re.search(what + r", which does not stack", str(err)), err
        with pytest.raises(TypeError, match="the input is a str"):
            await nb.serving.run("mlp", "not an array", timeout=T)
        stats = await nb.serving.stats("mlp")
        assert stats["batch_sizes"] == {2: 1} and stats["failed"] == 3


async def test_overloaded_past_max_queue_and_a_timed_out_request_is_withdrawn() -> None:
    async with nb.Runtime():
        opened = gate(nb.self())
        await nb.Serving.start_link(
            gated, name="g", batch_size=1, batch_timeout=0.0, partitions=1, max_queue=2
        )
        nb.spawn(caller, nb.self(), "first", "g", np.ones(2))
        assert await nb.receive(lambda m: m == ("started", 1), timeout=T)
        # The partition is busy: a request that times out leaves the queue.
        with pytest.raises(TimeoutError, match=r"did not answer within 0\.05 s"):
            await nb.serving.run("g", np.ones(2), timeout=0.05)
        stats = await nb.serving.stats("g")
        assert stats["queue_length"] == 0 and stats["running"] == 1
        for tag in ("second", "third"):
            nb.spawn(caller, nb.self(), tag, "g", np.ones(2))
        for _ in range(10_000):  # each stats call is a round trip behind the callers' requests
            if (await nb.serving.stats("g"))["queue_length"] == 2:
                break
        with pytest.raises(nb.Overloaded, match=r"2 inputs wait \(max_queue=2\)"):
            await nb.serving.run("g", np.ones(2), timeout=T)
        opened.set()
        got = await results(["first", "second", "third"])
        assert all(kind == "ok" and row.tolist() == [2, 2] for kind, row in got.values())
        stats = await nb.serving.stats("g")
        assert stats["overloaded"] == 1 and stats["requests"] == 3


async def test_killed_mid_batch_callers_get_callerror_and_the_supervisor_restarts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    async with nb.Runtime():
        opened = gate(nb.self())
        child = nb.Child(
            nb.Serving, args=(gated,), kwargs={"name": "g", "batch_size": 2}, id="serving"
        )
        sup = await nb.Supervisor.start_link([child])
        [(_, first, _)] = await nb.Supervisor.which_children(sup)
        assert nb.whereis("g") == first
        nb.spawn(caller, nb.self(), "a", "g", np.ones(2))
        nb.spawn(caller, nb.self(), "b", "g", np.ones(2))
        assert await nb.receive(lambda m: m == ("started", 2), timeout=T)
        nb.exit(first, "kill")
        got = await results(["a", "b"])
        for kind, err in got.values():
            assert kind == "error" and isinstance(err, nb.CallError) and err.reason == "killed"
        ref, members = nb.pg.monitor(("numbeam.serving", "g"))
        while not members or members == [first]:
            await nb.receive(lambda m: type(m) is nb.pg.Join and m.ref == ref, timeout=T)
            members = nb.pg.members(("numbeam.serving", "g"))
        [(_, second, _)] = await nb.Supervisor.which_children(sup)
        assert second != first and nb.whereis("g") == second
        opened.set()
        assert (await nb.serving.run("g", np.ones(2), timeout=T)).tolist() == [2, 2]
        await nb.stop(sup, timeout=T)


async def test_tuple_and_dict_inputs_and_an_async_predict_with_partitions() -> None:
    async def predict(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return batch["a"] + batch["b"], batch["a"].sum(axis=1)

    async with nb.Runtime():
        await nb.Serving.start_link(predict, name="p", batch_size=4, partitions=2)
        xs = [{"a": np.full(3, i), "b": np.ones(3, dtype=np.int64)} for i in range(10)]
        rows = await nb.serving.run_batch("p", xs, timeout=T)
        assert [(s.tolist(), int(t)) for s, t in rows] == [([i + 1] * 3, 3 * i) for i in range(10)]
        assert (await nb.serving.stats("p"))["partitions"] == ["cpu", "cpu"]


async def test_no_serving_and_bad_options_are_named() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.NoProc, match="no serving named 'none'"):
            await nb.serving.run("none", np.ones(2))
        with pytest.raises(nb.NoProc):
            await nb.serving.stats("none")
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            await nb.Serving.start_link(mlp, name="m", batch_size=0)
        with pytest.raises(ValueError, match="batch_timeout"):
            await nb.Serving.start_link(mlp, name="m", batch_timeout=-1)
        with pytest.raises(TypeError, match="predict must be a function"):
            await nb.Serving.start_link(42, name="m")
        with pytest.raises(ValueError, match="unknown devices"):
            await nb.Serving.start_link(mlp, name="m", devices=["fake:7"])
        with pytest.raises(TypeError, match="module-level function"):
            await nb.Serving.start_link(lambda b: b, name="m", devices=["fake:7"])


async def test_each_batch_is_logged_at_debug_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="numbeam.serving")
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=2)
        await nb.serving.run_batch("mlp", [np.ones(8)] * 3, timeout=T)
    batches = [r.getMessage() for r in caplog.records if r.name == "numbeam.serving"]
    assert len(batches) == 2
    assert re.match(r"serving 'mlp': batch 1 of 2 on partition 0: [\d.]+ ms$", batches[0])
    assert re.match(r"serving 'mlp': batch 2 of 1 on partition 0: [\d.]+ ms$", batches[1])


async def test_concurrent_requests_from_tasks_of_one_process() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(mlp, name="mlp", batch_size=16, batch_timeout=0.01)
        xs = [np.full(8, i / 100) for i in range(50)]
        async with asyncio.timeout(T):
            rows = await asyncio.gather(*(nb.serving.run("mlp", x, timeout=T) for x in xs))
            with pytest.raises(ValueError, match="does not stack"):
                await asyncio.gather(
                    nb.serving.run("mlp", np.ones(8), timeout=T),
                    nb.serving.run("mlp", np.ones(3), timeout=T),
                    nb.serving.run("mlp", np.ones(8), timeout=T),
                )
        assert all(np.allclose(r, np.tanh(x @ W)) for r, x in zip(rows, xs, strict=True))
        assert max((await nb.serving.stats("mlp"))["batch_sizes"]) == 16


async def test_a_killed_caller_withdraws_its_queued_request() -> None:
    async with nb.Runtime():
        opened = gate(nb.self())
        await nb.Serving.start_link(gated, name="g", batch_size=1, batch_timeout=0.0)
        nb.spawn(caller, nb.self(), "first", "g", np.ones(2))
        assert await nb.receive(lambda m: m == ("started", 1), timeout=T)
        victim, ref = nb.spawn_monitor(caller, nb.self(), "victim", "g", np.ones(2))
        for _ in range(10_000):
            if (await nb.serving.stats("g"))["queue_length"] == 1:
                break
        nb.exit(victim, "kill")
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert (await nb.serving.stats("g"))["queue_length"] == 0
        opened.set()
        assert (await results(["first"]))["first"][0] == "ok"
        stats = await nb.serving.stats("g")
        assert stats["batches"] == 1 and stats["requests"] == 1


async def test_an_instance_gone_before_it_took_the_request_is_skipped() -> None:
    from numbeam.serving._client import _loads
    from numbeam.transport._pg import _groups

    async with nb.Runtime():
        real = await nb.Serving.start_link(mlp, name="mlp", batch_size=1)
        # A stale view, as another node's can be for a moment: a dead pid still in the group,
        # and looking less loaded than the live serving, so it is tried first.
        dead, ref = nb.spawn_monitor(caller, nb.self(), "x", "none", np.ones(8))
        await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        _groups().join(("numbeam.serving", "mlp"), [dead])
        _loads().queued[real] = 100
        row = await nb.serving.run("mlp", np.ones(8), timeout=T)
        assert np.allclose(row, np.tanh(np.ones(8) @ W))
        assert (await nb.serving.stats("mlp"))["requests"] == 1
        _groups().leave(("numbeam.serving", "mlp"), [dead])
        nb.pg.leave(("numbeam.serving", "mlp"), real)
        with pytest.raises(nb.NoProc, match="no serving named 'mlp' in the cluster"):
            await nb.serving.run("mlp", np.ones(8), timeout=T)


async def test_predict_by_module_path_and_a_wrong_path_fails_the_start() -> None:
    async with nb.Runtime():
        await nb.Serving.start_link(f"{__name__}:mlp", name="mlp", batch_size=1)
        assert np.allclose(await nb.serving.run("mlp", np.ones(8)), np.tanh(np.ones(8) @ W))
        with pytest.raises(nb.StartError) as err:
            await nb.Serving.start(f"{__name__}:no_such_model", name="other")
        assert isinstance(err.value.reason, AttributeError)
