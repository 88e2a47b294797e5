"""A fault-tolerant numerical pipeline: chunks of a generated signal through an FFT stage and
a batched writer, with some chunks failing and a processor killed mid-run.

Each item is the index of a 4096-sample chunk of a signal whose tone changes every chunk. A
processor (4 of them) makes the chunk, takes its spectrum with numpy's FFT in a thread and
finds the peak frequency; every 25th chunk is corrupt and fails (tried again twice, then
acknowledged as failed). A batcher writes the results 32 at a time. Meanwhile the program
kills one processor with ``nb.exit(pid, "kill")``: the pipeline's supervisor starts a new
one and the chunks it held are processed again. At the end every chunk has been
acknowledged exactly once, and each written peak matches the tone that was put in.

    python examples/pipeline.py            # an in-memory source
    python examples/pipeline.py --redis    # a Redis stream, if redis-server is on the PATH
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
from collections import Counter
from typing import Any

import numpy as np

import numbeam as nb

N_CHUNKS = 200
SAMPLES = 4096
RATE = 8192.0  # samples per second: FFT bins are 2 Hz apart

written: dict[int, float] = {}  # the "store" the batcher writes to: chunk -> peak (Hz)


def tone(idx: int) -> float:
    return 100.0 + 2.0 * (idx % 1000)


def chunk_of(item: Any) -> int:
    """An item is a chunk index (in memory) or a Redis entry ``(id, {b"chunk": ...})``."""
    return item if isinstance(item, int) else int(item[1][b"chunk"])


def spectrum_peak(idx: int) -> float:
    t = np.arange(SAMPLES) / RATE
    rng = np.random.default_rng(idx)
    signal = np.sin(2 * np.pi * tone(idx) * t) + 0.3 * rng.standard_normal(SAMPLES)
    power = np.abs(np.fft.rfft(signal))
    return float(np.fft.rfftfreq(SAMPLES, 1 / RATE)[power.argmax()])


class Spectra(nb.Pipeline):
    async def handle_message(self, item: Any) -> tuple[int, float]:
        idx = chunk_of(item)
        if idx % 25 == 7:
            raise ValueError(f"chunk {idx} is corrupt")
        return idx, await asyncio.to_thread(spectrum_peak, idx)

    async def handle_batch(self, results: list[tuple[int, float]]) -> None:
        written.update(results)


class Counted:
    """Wraps a source (an nb.pipeline.Source itself): counts each acknowledgement, and tells
    `notify` how many items are done so far."""

    def __init__(self, inner: Any, notify: nb.Pid) -> None:
        self.inner, self.notify = inner, notify
        self.acks: Counter[int] = Counter()
        self.failed: dict[int, Any] = {}

    async def fetch(self, demand: int) -> list[Any] | None:
        return await self.inner.fetch(demand)

    async def ack(self, ok_items: list[Any], failed: list[tuple[Any, Any]]) -> None:
        await self.inner.ack(ok_items, failed)
        self.acks.update(chunk_of(item) for item in ok_items)
        for item, reason in failed:
            self.acks[chunk_of(item)] += 1
            self.failed[chunk_of(item)] = reason
        nb.send(self.notify, ("done", sum(self.acks.values())))

    async def aclose(self) -> None:
        aclose = getattr(self.inner, "aclose", None)
        if aclose is not None:
            await aclose()


def start_redis() -> tuple[subprocess.Popen[str], str] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return proc, f"redis://127.0.0.1:{port}/0"
    raise RuntimeError("redis-server did not start")


async def redis_source(url: str) -> Any:
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(url) as r:
        for idx in range(N_CHUNKS):
            await r.xadd("signal", {"chunk": idx})
    return nb.pipeline.from_redis_stream("signal", "fft", "example", url=url, until_empty=True)


async def main(use_redis: bool) -> None:
    server = None
    if use_redis:
        server = start_redis()
        if server is None:
            print("no redis-server on the PATH: using an in-memory source instead")
    if server is not None:
        print(f"reading {N_CHUNKS} chunks from a Redis stream at {server[1]}")
        inner = await redis_source(server[1])
    else:
        print(f"reading {N_CHUNKS} chunks from an in-memory source")
        inner = nb.pipeline.from_iterable(range(N_CHUNKS))
    try:
        source = Counted(inner, nb.self())
        pid = await Spectra.start_link(
            source, concurrency=4, max_demand=8, batch_size=32, batch_timeout=0.5, max_retries=2
        )
        # Once a quarter of the chunks are done, kill a processor that holds some.
        done = 0
        while done < N_CHUNKS // 4:
            _, done = await nb.receive(lambda m: m[0] == "done", timeout=10)
        stats = await nb.pipeline.stats(pid)
        victim = stats["processors"][0]
        nb.exit(victim, "kill")
        print(f"{done} chunks done: killed processor {victim}")
        summary = await nb.pipeline.wait(pid, timeout=30)
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait()
    print(f"summary: {summary['ok']} ok, {summary['failed']} failed, {summary['retried']} retried")
    rerun = summary["retried"] - 2 * len(source.failed)  # each failed chunk was tried 3 times
    print(
        f"  retried: {2 * len(source.failed)} retries of failing chunks, {rerun} chunks the "
        "killed processor held, run again"
    )
    for idx, reason in sorted(source.failed.items()):
        print(f"  chunk {idx} failed: {reason!r}")
    once = all(n == 1 for n in source.acks.values()) and len(source.acks) == N_CHUNKS
    correct = all(abs(peak - tone(idx)) <= 2.0 for idx, peak in written.items())
    missing = set(range(N_CHUNKS)) - set(written) - set(source.failed)
    print(f"every chunk acknowledged exactly once: {once}; none lost: {not missing}")
    print(f"{len(written)} peaks written, all at the tone put in: {correct}")


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", action="store_true", help="read from a Redis stream")
    nb.run(main, parser.parse_args().redis)
