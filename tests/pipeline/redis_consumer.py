"""A pipeline node for the durability test: reads a Redis stream as consumer CONSUMER of
GROUP until it is empty, appends the id of every entry it writes to OUT (one batch at a
time, flushed), and prints ``progress N`` after each batch and ``summary ...`` at the end.

    python redis_consumer.py URL STREAM GROUP CONSUMER OUT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import numbeam as nb


def append(path: str, ids: list[str]) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{i}\n" for i in ids))


class Writer(nb.Pipeline):
    out = ""  # the file the batcher writes to
    written = 0

    async def handle_message(self, entry: Any) -> str:
        await asyncio.sleep(0.0005)  # a little work per entry, so that some are in flight
        return str(entry[0])

    async def handle_batch(self, ids: list[str]) -> None:
        append(Writer.out, ids)
        Writer.written += len(ids)
        print(f"progress {Writer.written}", flush=True)


async def run_node(url: str, stream: str, group: str, consumer: str, out: str) -> list[int]:
    """Run the pipeline until the stream is empty: [ok, failed, redelivered]."""
    Writer.out = out
    src = nb.pipeline.from_redis_stream(
        stream, group, consumer, url=url, until_empty=True, claim_idle=None
    )
    pid = await Writer.start_link(src, concurrency=4, max_demand=10, batch_size=20)
    summary = await nb.pipeline.wait(pid)
    return [summary["ok"], summary["failed"], src.redelivered]


if __name__ == "__main__":
    print("summary", *nb.run(run_node, *sys.argv[1:6]), flush=True)
