"""nb.Serving against calling the model per request, and against a hand-written batching loop,
in one run.

The model is a numpy MLP with fixed random weights (2048 -> 4096 -> 16, float32, 32 MB of
weights): one row streams all the weights from memory, so a batch of 64 costs a few rows, not
64 (the kind of model batching is for). The same inputs go through three paths:

1. Per request (the baseline): ``predict(x[None])`` once per input, in a plain loop, no
   runtime, BLAS at its default threads.
2. Serving: 1,000 requester processes, each calling ``nb.serving.run`` with its input at the
   same moment; from the "go" to the last answer. Goal: >= 10x the baseline's throughput at
   batch_size 64, for a model where a batch of 64 costs little more than one row. The run
   prints what batching alone can give on this model here (64 rows one by one over one batch
   of 64): a dense layer on a CPU is compute-bound at batch 64, so that bound is what the
   serving's ratio is to be read against.
3. Ceiling: a loop that already has every input, stacks 64 at a time and calls `predict`, no
   runtime in between (the faster of BLAS at its default threads and at one thread, which is
   what the serving's predict thread runs with). Goal: the serving reaches >= 0.8x of it.

Then latency at half the serving's measured throughput (open loop: requests arrive at a steady
rate, each timed by its caller): p99 <= batch_timeout + 2x one batch's compute. (1,000 callers
at once measure throughput; their latency is only the queue's depth over the throughput.)

    python bench/serving.py [--quick] [--partitions N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, rate

import numbeam as nb

BATCH_SIZE = 64
BATCH_TIMEOUT = 0.01
THROUGHPUT_GOAL = 10.0
CEILING_GOAL = 0.8

D_IN, HIDDEN, D_OUT = 2048, 4096, 16
_rng = np.random.default_rng(0)
W1 = np.empty((0, 0), np.float32)
W2 = np.empty((0, 0), np.float32)


def build_model(d_in: int, hidden: int) -> None:
    global W1, W2
    W1 = (_rng.standard_normal((d_in, hidden), dtype=np.float32) / np.sqrt(d_in)).astype(np.float32)
    W2 = _rng.standard_normal((hidden, D_OUT), dtype=np.float32) / np.sqrt(hidden)


def predict(batch: np.ndarray) -> np.ndarray:
    return np.maximum(batch @ W1, 0) @ W2


async def requester(parent: nb.Pid, i: int, x: np.ndarray) -> None:
    """Wait for "go", run one request, report ``(i, row, latency)``."""
    await nb.receive(lambda m: m == "go")
    t0 = time.perf_counter()
    row = await nb.serving.run("mlp", x, timeout=120)
    nb.send(parent, (i, row, time.perf_counter() - t0))


async def timed_request(parent: nb.Pid, i: int, x: np.ndarray) -> None:
    t0 = time.perf_counter()
    row = await nb.serving.run("mlp", x, timeout=120)
    nb.send(parent, (i, row, time.perf_counter() - t0))


async def serve_all(xs: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Seconds from "go" to the last of len(xs) concurrent requests answered, and the rows."""
    me = nb.self()
    pids = [nb.spawn(requester, me, i, x) for i, x in enumerate(xs)]
    await asyncio.sleep(0.2)  # every requester is waiting for "go"
    t0 = time.perf_counter()
    for pid in pids:
        nb.send(pid, "go")
    rows: list[np.ndarray] = [np.empty(0)] * len(xs)
    for _ in xs:
        i, row, _ = await nb.receive(timeout=120)
        rows[i] = row
    return time.perf_counter() - t0, rows


async def open_loop(xs: list[np.ndarray], per_s: float) -> list[float]:
    """Latencies of requests sent at a steady `per_s`, each timed by its own caller."""
    me = nb.self()
    t0 = time.perf_counter()
    for i, x in enumerate(xs):
        due = t0 + i / per_s
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        nb.spawn(timed_request, me, i, x)
    lat = []
    for _ in xs:
        _, _, seconds = await nb.receive(timeout=120)
        lat.append(seconds)
    return lat


async def main(quick: bool, partitions: int) -> None:
    n = 200 if quick else 1000
    repeats = 1 if quick else 3
    if quick:
        build_model(256, 512)
    else:
        build_model(D_IN, HIDDEN)
    d_in = W1.shape[0]
    xs = [_rng.standard_normal(d_in, dtype=np.float32) for _ in range(n)]
    predict(np.stack(xs[:BATCH_SIZE]))  # warm up

    # 1. the baseline: predict once per request (a subset in the full run: it is slow)
    m = n if quick else 200
    t0 = time.perf_counter()
    for x in xs[:m]:
        predict(x[None])
    per_request = m / (time.perf_counter() - t0)
    # What batching alone can give on this model and machine: 64 rows one at a time against one
    # batch of 64 (same BLAS settings). The serving's ratio to per-request cannot exceed it.
    batch64 = np.stack(xs[:BATCH_SIZE])
    one_batch = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        predict(batch64)
        one_batch = min(one_batch, time.perf_counter() - t0)
    bound = BATCH_SIZE / per_request / one_batch

    await nb.Serving.start_link(
        predict,
        name="mlp",
        batch_size=BATCH_SIZE,
        batch_timeout=BATCH_TIMEOUT,
        partitions=partitions,
        max_queue=4 * n,
    )
    await nb.serving.run_batch("mlp", xs[:BATCH_SIZE])  # warm up
    # 2. and 3., interleaved (the machine's load drifts), best of `repeats` each. The ceiling:
    # all inputs at hand, stacked 64 at a time; the faster of BLAS at its default threads and
    # at one thread (what the serving's predict thread gets).
    ceiling = served = 0.0
    for _ in range(repeats):
        for threads in (None, 1):
            with threadpool_limits(threads):
                t0 = time.perf_counter()
                expected = [
                    predict(np.stack(xs[i : i + BATCH_SIZE])) for i in range(0, n, BATCH_SIZE)
                ]
                ceiling = max(ceiling, n / (time.perf_counter() - t0))
        seconds, rows = await serve_all(xs)
        served = max(served, n / seconds)
        assert np.allclose(np.stack(rows), np.concatenate(expected), rtol=1e-4, atol=1e-4)
    stats = await nb.serving.stats("mlp")
    batch_s = stats["mean_batch_seconds"]

    # 4. latency at half load
    lat = np.array(await open_loop(xs, served / 2))
    p50, p99 = np.percentile(lat, [50, 99])
    latency_goal = BATCH_TIMEOUT + 2 * batch_s

    ratio, of_ceiling = served / per_request, served / ceiling
    model = f"{d_in}->{W1.shape[1]}->{D_OUT} f32"
    rows_out = [
        [
            f"throughput vs predict per request ({model})",
            f"{rate(served)} vs {rate(per_request)} = {ratio:.1f}x",
            f">= {THROUGHPUT_GOAL:g}x",
            "PASS" if ratio >= THROUGHPUT_GOAL else "FAIL",
        ],
        [
            "throughput vs hand-written batching (ceiling)",
            f"{rate(served)} vs {rate(ceiling)} = {of_ceiling:.2f}x",
            f">= {CEILING_GOAL:g}x",
            "PASS" if of_ceiling >= CEILING_GOAL else "FAIL",
        ],
        [
            "p99 latency at half load",
            f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms",
            f"<= {latency_goal * 1e3:.1f} ms (timeout + 2 batches)",
            "PASS" if p99 <= latency_goal else "FAIL",
        ],
        [
            "batching's bound on this model (64 rows one by one / one batch of 64)",
            f"{BATCH_SIZE / per_request * 1e3:.1f} ms / {one_batch * 1e3:.1f} ms = {bound:.1f}x",
            f"{ratio / bound:.0%} of it reached",
            "info",
        ],
        [
            f"batches of {n} concurrent requests",
            f"mean size {stats['mean_batch_size']:.1f}, one batch {batch_s * 1e3:.2f} ms",
            f"<= {BATCH_SIZE}",
            "info",
        ],
    ]
    print(
        f"serving: batch_size={BATCH_SIZE}, batch_timeout={BATCH_TIMEOUT}, "
        f"partitions={partitions}, {n} requesters"
    )
    print_table(["benchmark", "figure", "target", "result"], rows_out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small model")
    parser.add_argument("--partitions", type=int, default=1, help="batches run at once")
    args = parser.parse_args()
    nb.run(main, args.quick, args.partitions)
