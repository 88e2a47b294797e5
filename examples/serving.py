"""A model served to 1,000 concurrent clients: nb.Serving gathers their requests into batches.

The model is a small numpy MLP with fixed random weights. A supervisor keeps a serving of it
named "mlp" (batches of at most 64 inputs, leaving 10 ms after their first input at the
latest). Then 1,000 client processes each send one input through ``nb.serving.run`` at once
and check the row they get back against the model applied to their input alone. The program
prints how the requests were batched (a histogram of batch sizes) and the latency each client
saw, then shows the failure paths: an input of the wrong shape fails alone, and a request
beyond the queue's limit is refused with nb.Overloaded.

    python examples/serving.py
"""

from __future__ import annotations

import logging
import time

import numpy as np

import numbeam as nb

CLIENTS = 1000
D_IN, HIDDEN, D_OUT = 64, 256, 10

rng = np.random.default_rng(42)
W1 = rng.standard_normal((D_IN, HIDDEN)).astype(np.float32) / np.sqrt(D_IN)
W2 = rng.standard_normal((HIDDEN, D_OUT)).astype(np.float32) / np.sqrt(HIDDEN)

log = logging.getLogger("serving")


def predict(batch: np.ndarray) -> np.ndarray:
    """Class scores for a batch of inputs, shape (n, 64) -> (n, 10)."""
    return np.maximum(batch @ W1, 0) @ W2


async def client(parent: nb.Pid, i: int) -> None:
    x = np.random.default_rng(i).standard_normal(D_IN).astype(np.float32)
    t0 = time.perf_counter()
    row = await nb.serving.run("mlp", x, timeout=10.0)
    seconds = time.perf_counter() - t0
    ok = bool(np.allclose(row, predict(x[None])[0], rtol=1e-4, atol=1e-5))
    nb.send(parent, ("answer", i, ok, seconds))


async def one_request(parent: nb.Pid, tag: str, x: np.ndarray) -> None:
    try:
        row = await nb.serving.run("mlp", x, timeout=10.0)
        nb.send(parent, ("outcome", tag, f"a row of {row.shape[0]} scores"))
    except ValueError as e:
        nb.send(parent, ("outcome", tag, f"ValueError: {e}"))


async def main() -> None:
    serving = nb.Child(
        nb.Serving,
        args=(predict,),
        kwargs={"name": "mlp", "batch_size": 64, "batch_timeout": 0.01, "max_queue": 2000},
    )
    await nb.Supervisor.start_link([serving])
    print(f"serving 'mlp' up: an MLP {D_IN} -> {HIDDEN} -> {D_OUT}, batches of up to 64")

    t0 = time.perf_counter()
    for i in range(CLIENTS):
        nb.spawn(client, nb.self(), i)
    answers = [await nb.receive(lambda m: m[0] == "answer", timeout=30) for _ in range(CLIENTS)]
    wall = time.perf_counter() - t0
    correct = sum(ok for _, _, ok, _ in answers)
    print(f"{CLIENTS} clients answered in {wall * 1e3:.0f} ms, {correct} rows correct")

    stats = await nb.serving.stats("mlp")
    print(f"{stats['batches']} batches, mean size {stats['mean_batch_size']:.1f}:")
    for size, count in stats["batch_sizes"].items():
        print(f"  batch size {size:3d}: {count:3d} {'#' * count}")
    lat = np.array([s for _, _, _, s in answers]) * 1e3
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    print(f"client latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms")

    # Two clients whose inputs land in one batch: the one of the wrong shape fails alone.
    for tag, x in (("good", np.zeros(D_IN, np.float32)), ("bad", np.zeros(3, np.float32))):
        nb.spawn(one_request, nb.self(), tag, x)
    for _ in range(2):
        _, tag, outcome = await nb.receive(lambda m: m[0] == "outcome", timeout=10)
        print(f"{tag} input: {outcome}")
    try:
        await nb.serving.run_batch("mlp", [np.zeros(D_IN, np.float32)] * 2001)
    except nb.Overloaded as e:
        print(f"too many at once: nb.Overloaded: {e}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5s %(name)s: %(message)s")
    nb.run(main)
