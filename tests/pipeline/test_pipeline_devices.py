"""nb.Pipeline with ``devices=``: processors pinned round-robin to fake devices' workers, and
the worker of one SIGKILLed mid-run: its processor is restarted on the new worker, the items
it held are processed again, and every item is still acknowledged exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from pipeline_helpers import Recording

import numbeam as nb

T = 15.0  # a worker's first start is a fresh interpreter
DEVICES = ["fake:0", "fake:1"]


class OnDevice(nb.Pipeline):
    """Runs on a device's worker (imported there by module path); the batcher is local."""

    async def handle_message(self, item: int) -> Any:
        await asyncio.sleep(0.001)  # each item takes a little while, so items are in flight
        if item % 97 == 13:
            raise ValueError(f"item {item} fails on {nb.device()}")
        return (item, nb.device(), os.getpid())

    async def handle_batch(self, results: list[Any]) -> None:
        nb.send("pl_test", ("batch", results))


async def test_processors_on_devices_and_a_sigkilled_worker_loses_nothing() -> None:
    async with nb.Runtime(devices=DEVICES):
        nb.register("pl_test", nb.self())
        q = nb.pipeline.from_queue(maxsize=40)
        src = Recording(q)
        pid = await OnDevice.start_link(
            src, concurrency=2, max_demand=8, batch_size=20, batch_timeout=0.05, devices=DEVICES
        )
        seen: list[Any] = []
        n = 0

        async def feed_until(done: Any) -> None:
            """Keep the queue full and collect batches until `done()`."""
            nonlocal n, seen
            while not done():
                try:
                    q.put_nowait(n)
                    n += 1
                except asyncio.QueueFull:
                    _, batch = await nb.receive(lambda m: m[0] == "batch", timeout=T)
                    seen += batch

        def on_both() -> bool:
            devs = [dev for _, dev, _ in seen]
            return devs.count("fake:0") >= 50 and "fake:1" in devs

        await feed_until(on_both)
        old = nb.gpu.workers()["fake:0"]["os_pid"]
        assert {os_pid for _, dev, os_pid in seen if dev == "fake:0"} == {old}
        assert {dev for _, dev, _ in seen} == set(DEVICES)
        os.kill(old, signal.SIGKILL)
        # until the restarted processor has run items on the new worker of fake:0
        await feed_until(lambda: any(d == "fake:0" and p != old for _, d, p in seen))
        q.close()
        summary = await nb.pipeline.wait(pid, timeout=30)
        while True:
            try:
                _, batch = await nb.receive(lambda m: m[0] == "batch", timeout=0)
            except TimeoutError:
                break
            seen += batch
        bad = {i for i in range(n) if i % 97 == 13}
        assert summary["ok"] == n - len(bad) and summary["failed"] == len(bad)
        assert summary["retried"] > 0  # what the killed processor held was run again
        src.assert_each_once(range(n))
        # a failure on a worker arrives as nb.RemoteError, with the handler's message
        assert set(src.failed) == bad
        reason = src.failed[13]
        assert isinstance(reason, nb.RemoteError) and reason.type_name == "ValueError"
        assert "item 13 fails on fake:" in str(reason)
        assert src.max_out <= 2 * 8 + 20
        w = nb.gpu.workers()["fake:0"]
        assert w["os_pid"] != old and w["restarts"] == 1
        assert {p for _, d, p in seen if d == "fake:0"} == {old, w["os_pid"]}
        # processed at least once each (the re-runs may repeat an item), acknowledged once
        assert {item for item, _, _ in seen} == set(range(n)) - bad
