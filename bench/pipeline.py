"""nb.Pipeline against hand-written asyncio, in one run.

1. In memory: items/s through a pipeline of trivial handlers (``handle_message`` returns the
   item, ``handle_batch`` does nothing; concurrency 4, batch_size 100, the defaults otherwise)
   over ``from_iterable(range(N))``, until `wait` returns; against 4 asyncio worker tasks over
   an ``asyncio.Queue(maxsize=40)`` fed by a producer task, each calling the same two handlers
   (a batch of 100 per worker), with no acknowledgement, retry or supervision. Goal >= 1.0x.
2. Redis: items/s through the same pipeline reading a stream of N entries as a consumer group
   (``from_redis_stream(..., until_empty=True)``: XREADGROUP, XACK; max_demand 50, so that a
   fetch, made once half the processors' room is free, reads about 100 entries), against a
   bare redis-py loop doing XREADGROUP COUNT 100, the same two handlers and one XACK per
   batch. Goal >= 0.8x. Needs a
   ``redis-server`` on the PATH (started here on a free port, without persistence; SKIP
   without one).

Both sides run in the same node and event loop, interleaved, best of `--reps`.

    python bench/pipeline.py [--quick] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, rate

import numbeam as nb

CONCURRENCY = 4
BATCH = 100
MEMORY_GOAL = 1.0
REDIS_GOAL = 0.8


class Trivial(nb.Pipeline):
    async def handle_message(self, item: Any) -> Any:
        return item

    async def handle_batch(self, results: list[Any]) -> None:
        return None


async def pipeline_run(source: Any, n: int, max_demand: int = 10) -> float:
    t0 = time.perf_counter()
    pid = await Trivial.start_link(
        source, concurrency=CONCURRENCY, batch_size=BATCH, max_demand=max_demand
    )
    summary = await nb.pipeline.wait(pid)
    dt = time.perf_counter() - t0
    assert summary["ok"] == n, summary
    return n / dt


async def queue_pool_run(n: int) -> float:
    """The baseline: a producer task, an asyncio.Queue and 4 worker tasks."""
    handler = Trivial()
    q: asyncio.Queue[Any] = asyncio.Queue(maxsize=CONCURRENCY * 10)
    done = 0
    stop = object()

    async def producer() -> None:
        for i in range(n):
            await q.put(i)
        for _ in range(CONCURRENCY):
            await q.put(stop)

    async def worker() -> None:
        nonlocal done
        batch: list[Any] = []
        while True:
            item = await q.get()
            if item is stop:
                break
            batch.append(await handler.handle_message(item))
            if len(batch) >= BATCH:
                await handler.handle_batch(batch)
                done += len(batch)
                batch = []
        if batch:
            await handler.handle_batch(batch)
            done += len(batch)

    t0 = time.perf_counter()
    await asyncio.gather(producer(), *(worker() for _ in range(CONCURRENCY)))
    dt = time.perf_counter() - t0
    assert done == n
    return n / dt


# -- Redis ----------------------------------------------------------------------------------


def start_redis() -> tuple[subprocess.Popen[str], str] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--logfile", ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return proc, f"redis://127.0.0.1:{port}/0"
    proc.wait()
    raise RuntimeError("redis-server did not start")


async def fill(url: str, stream: str, n: int) -> None:
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(url) as r:
        await r.delete(stream)
        for start in range(0, n, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(n, start + 1000)):
                pipe.xadd(stream, {"n": i})
            await pipe.execute()


async def redis_pipeline_run(url: str, stream: str, group: str, n: int) -> float:
    src = nb.pipeline.from_redis_stream(stream, group, "c", url=url, until_empty=True)
    # max_demand 50: while its processors are busy a pipeline fetches once half their room
    # (4 x 50 / 2) is free, so a fetch reads about as many entries as the baseline's COUNT
    return await pipeline_run(src, n, max_demand=2 * BATCH // CONCURRENCY)


async def redis_loop_run(url: str, stream: str, group: str, n: int) -> float:
    """The baseline: XREADGROUP COUNT 100, the two handlers, one XACK per batch."""
    import redis.asyncio as aioredis

    handler = Trivial()
    done = 0
    async with aioredis.Redis.from_url(url) as r:
        await r.xgroup_create(stream, group, id="0")
        t0 = time.perf_counter()
        while True:
            reply = await r.xreadgroup(group, "c", {stream: ">"}, count=BATCH)
            if not reply or not reply[0][1]:
                break
            entries = reply[0][1]
            results = [await handler.handle_message(e) for e in entries]
            await handler.handle_batch(results)
            await r.xack(stream, group, *[eid for eid, _ in entries])
            done += len(entries)
        dt = time.perf_counter() - t0
    assert done == n
    return n / dt


def verdict(ratio: float, goal: float) -> str:
    return "PASS" if ratio >= goal else "FAIL"


async def main(quick: bool, reps: int) -> None:
    n_mem = 20_000 if quick else 200_000
    n_redis = 5_000 if quick else 50_000
    rows = []

    pipe_best = base_best = 0.0
    for _ in range(reps):
        base_best = max(base_best, await queue_pool_run(n_mem))
        source = nb.pipeline.from_iterable(range(n_mem))
        pipe_best = max(pipe_best, await pipeline_run(source, n_mem))
    ratio = pipe_best / base_best
    rows.append(
        (f"in memory, {n_mem:,} items", rate(pipe_best), rate(base_best), f"{ratio:.2f}x",
         f">= {MEMORY_GOAL}x", verdict(ratio, MEMORY_GOAL))
    )  # fmt: skip

    server = start_redis()
    if server is None:
        rows.append(
            (f"redis stream, {n_redis:,} entries", "-", "-", "-", f">= {REDIS_GOAL}x",
             "SKIP (no redis-server on the PATH)")
        )  # fmt: skip
    else:
        proc, url = server
        try:
            await fill(url, "bench", n_redis)
            pipe_best = base_best = 0.0
            for rep in range(reps):
                base_best = max(base_best, await redis_loop_run(url, "bench", f"b{rep}", n_redis))
                pipe_best = max(
                    pipe_best, await redis_pipeline_run(url, "bench", f"p{rep}", n_redis)
                )
            ratio = pipe_best / base_best
            rows.append(
                (f"redis stream, {n_redis:,} entries", rate(pipe_best), rate(base_best),
                 f"{ratio:.2f}x", f">= {REDIS_GOAL}x", verdict(ratio, REDIS_GOAL))
            )  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    print_table(("benchmark", "nb.Pipeline", "baseline", "ratio", "goal", "result"), rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20k items, 5k entries")
    parser.add_argument("--reps", type=int, default=3, help="runs of each side; the best counts")
    args = parser.parse_args()
    nb.run(main, args.quick, args.reps if not args.quick else 1)
