"""nb.offload: blocking work on the node's bounded thread pool, BLAS threads limited (issue 11)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import numbeam as nb

WAIT = 5.0


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def add(a: int, b: int, *, fn: str = "") -> tuple[int, str, int]:
    return a + b, fn, threading.get_ident()


def boom() -> None:
    raise ValueError("bad input")


async def test_offload_returns_the_result_from_another_thread() -> None:
    async with nb.Runtime():
        total, fn, ident = await nb.offload(add, 1, 2, fn="kw named fn")
        assert (total, fn) == (3, "kw named fn")
        assert ident != threading.get_ident()
        x = np.arange(6.0).reshape(2, 3)
        assert np.array_equal(await nb.offload(np.dot, x, x.T), x @ x.T)


async def test_offload_raises_the_function_s_exception() -> None:
    async with nb.Runtime():
        with pytest.raises(ValueError, match="bad input"):
            await nb.offload(boom)


async def test_offload_rejects_what_it_cannot_run() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="blocking function"):
            await nb.offload(42)  # type: ignore[arg-type]

        async def coro() -> None:
            pass

        with pytest.raises(TypeError, match="async function"):
            await nb.offload(coro)
    with pytest.raises(RuntimeError, match="no numbeam runtime"):
        await nb.offload(add, 1, 2)


def test_offload_options_are_checked() -> None:
    with pytest.raises(ValueError, match="offload_threads"):
        nb.NodeOptions.resolve(offload_threads=0)
    with pytest.raises(ValueError, match="offload_blas_threads"):
        nb.NodeOptions.resolve(offload_blas_threads=True)
    opts = nb.NodeOptions.resolve(offload_threads=3, offload_blas_threads=2)
    assert (opts.offload_threads, opts.offload_blas_threads) == (3, 2)


async def test_the_loop_keeps_scheduling_while_a_job_blocks() -> None:
    async with nb.Runtime():
        release = threading.Event()
        job = asyncio.ensure_future(nb.offload(release.wait, WAIT))

        async def echo() -> None:
            while True:
                sender, msg = await nb.receive()
                nb.send(sender, msg)

        pid = nb.spawn(echo)
        for i in range(100):
            nb.send(pid, (nb.self(), i))
            assert await nb.receive(timeout=WAIT) == i
        assert not job.done()
        release.set()
        assert await asyncio.wait_for(job, WAIT) is True


async def test_the_pool_is_bounded_by_offload_threads() -> None:
    async with nb.Runtime(offload_threads=2):
        lock = threading.Condition()
        state = {"active": 0, "most": 0, "started": 0}
        go = threading.Event()

        def job(i: int) -> int:
            with lock:
                state["active"] += 1
                state["started"] += 1
                state["most"] = max(state["most"], state["active"])
                lock.notify_all()
            go.wait(WAIT)
            with lock:
                state["active"] -= 1
            return i

        jobs = [asyncio.ensure_future(nb.offload(job, i)) for i in range(5)]

        def two_started() -> bool:
            with lock:
                return lock.wait_for(lambda: state["started"] >= 2, WAIT)

        assert await asyncio.to_thread(two_started)
        go.set()
        assert await asyncio.wait_for(asyncio.gather(*jobs), WAIT) == list(range(5))
        assert state["most"] == 2


async def test_blas_threads_are_limited_while_the_node_runs_and_restored_after() -> None:
    before = _blas_threads()
    async with nb.Runtime(offload_threads=2, offload_blas_threads=1):
        inside = await nb.offload(_blas_threads)
        assert inside and all(n == 1 for n in inside)
    assert _blas_threads() == before


async def test_a_killed_caller_does_not_hurt_the_pool() -> None:
    async with nb.Runtime(offload_threads=1):
        release = threading.Event()

        async def waiter() -> None:
            await nb.offload(release.wait, WAIT)

        pid, ref = nb.spawn_monitor(waiter)
        await asyncio.sleep(0)
        nb.exit(pid, "kill")
        down = await nb.receive(nb.Down, timeout=WAIT)
        assert down.ref == ref and down.reason == "killed"
        release.set()
        total, _, _ = await nb.offload(add, 2, 2)
        assert total == 4
