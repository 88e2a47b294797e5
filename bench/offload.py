"""A batched numpy MLP service: `nb.offload` against `asyncio.to_thread` with default BLAS threads.

The service is the same on both sides: `servers` processes each take requests (one input row
each) from their mailbox, batch what is waiting (up to `max_batch` rows), run a two-layer
MLP (``relu(x @ w1) @ w2``) on the batch off the event loop, and send each client its row of
the answer. `clients` processes each send `requests` requests in a closed loop (send, wait
for the answer, send the next), round-robin over the servers, and time each one. Only the
way the batch leaves the loop differs:

- numbeam: ``await nb.offload(mlp, x, w1, w2)``: the node's pool (one thread per CPU) with
  BLAS limited so that pool threads x BLAS threads = CPUs (the node's defaults);
- baseline: ``await asyncio.to_thread(mlp, x, w1, w2)``, as the README advised before: the
  default executor (cpu_count + 4 threads), OpenBLAS with its default threads (one per CPU).

Each side runs in a fresh interpreter (BLAS thread pools are process-wide state), the sides
alternate, and the best run of each is kept. Printed: requests/s, p50 and p99 latency, and
the ratios (throughput numbeam / baseline; p99 baseline / numbeam).

    python bench/offload.py            # full sizes (about a minute on 2 cores)
    python bench/offload.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

perf_counter = time.perf_counter


@dataclass(frozen=True, slots=True)
class Sizes:
    servers: int  # batching server processes (partitions)
    clients: int  # closed-loop client processes
    requests: int  # requests per client
    max_batch: int  # rows per batch at most
    d_in: int
    d_hidden: int
    d_out: int
    repeats: int  # runs of each side


FULL = Sizes(
    servers=4, clients=64, requests=200, max_batch=32, d_in=256, d_hidden=1024, d_out=16,
    repeats=3,
)  # fmt: skip
QUICK = Sizes(
    servers=4, clients=16, requests=25, max_batch=32, d_in=256, d_hidden=1024, d_out=16,
    repeats=1,
)  # fmt: skip


def mlp(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    return np.maximum(x @ w1, 0.0) @ w2  # type: ignore[no-any-return]


async def _server(side: str, max_batch: int, w1: np.ndarray, w2: np.ndarray) -> None:
    import numbeam as nb

    receive = nb.receive
    while True:
        batch = [await receive()]
        while len(batch) < max_batch:
            try:
                batch.append(await receive(None, 0))
            except TimeoutError:
                break
        x = np.stack([row for _, row in batch])
        if side == "offload":
            y = await nb.offload(mlp, x, w1, w2)
        else:
            y = await asyncio.to_thread(mlp, x, w1, w2)
        for (client, _), out in zip(batch, y, strict=True):
            nb.send(client, out)


async def _client(parent: Any, servers: list[Any], first: int, n: int, x: np.ndarray) -> None:
    import numbeam as nb

    me = nb.self()
    lat = []
    for i in range(n):
        t0 = perf_counter()
        nb.send(servers[(first + i) % len(servers)], (me, x))
        await nb.receive(None, 60.0)
        lat.append(perf_counter() - t0)
    nb.send(parent, lat)


async def _main(side: str, s: Sizes) -> dict[str, float]:
    import numbeam as nb

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((s.d_in, s.d_hidden)) / np.sqrt(s.d_in)
    w2 = rng.standard_normal((s.d_hidden, s.d_out)) / np.sqrt(s.d_hidden)
    x = rng.standard_normal(s.d_in)
    # Warm up off the clock: BLAS, and the pool (threadpoolctl looks at the loaded libraries
    # once, when nb.offload's pool starts).
    if side == "offload":
        await nb.offload(mlp, x[None, :], w1, w2)
    else:
        await asyncio.to_thread(mlp, x[None, :], w1, w2)
    servers = [nb.spawn_link(_server, side, s.max_batch, w1, w2) for _ in range(s.servers)]
    me = nb.self()
    t0 = perf_counter()
    for c in range(s.clients):
        nb.spawn_link(_client, me, servers, c, s.requests, x)
    lat: list[float] = []
    for _ in range(s.clients):
        lat.extend(await nb.receive(list, 300.0))
    elapsed = perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


def run_side(side: str, s: Sizes) -> dict[str, float]:
    """One side in a fresh interpreter; its figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--side", side, "--sizes", json.dumps(asdict(s))],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one run each")
    p.add_argument("--repeats", type=int, help="runs of each side (default 3, quick 1)")
    p.add_argument("--side", choices=("offload", "to_thread"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.side:
        import numbeam as nb

        s = Sizes(**json.loads(a.sizes))
        print(json.dumps(nb.run(_main, a.side, s)))
        return 0
    s = QUICK if a.quick else FULL
    if a.repeats is not None:
        s = Sizes(**{**asdict(s), "repeats": a.repeats})
    from threadpoolctl import threadpool_info

    blas = [f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info()]
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; BLAS: {', '.join(blas)}")
    print(
        f"{s.servers} batching servers (<= {s.max_batch} rows), {s.clients} clients x "
        f"{s.requests} requests, MLP {s.d_in}-{s.d_hidden}-{s.d_out}; best of {s.repeats}\n"
    )
    best: dict[str, dict[str, float]] = {}
    for _ in range(s.repeats):
        for side in ("to_thread", "offload"):
            r = run_side(side, s)
            if side not in best or r["rps"] > best[side]["rps"]:
                best[side] = r
    nbr, aio = best["offload"], best["to_thread"]
    rows = [
        ("asyncio.to_thread (default BLAS)", aio),
        ("nb.offload (node defaults)", nbr),
    ]
    print(f"{'side':34}  {'requests/s':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
    print("-" * 68)
    for name, r in rows:
        print(f"{name:34}  {r['rps']:10.0f}  {r['p50_ms']:8.1f}  {r['p99_ms']:8.1f}")
    print(
        f"\nthroughput nb.offload / to_thread: {nbr['rps'] / aio['rps']:.2f}x; "
        f"p99 to_thread / nb.offload: {aio['p99_ms'] / nbr['p99_ms']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
