"""nb.Serving with ``devices=``: one partition per fake device, each running in its device's
worker, with the batch arriving as a tensor already in that device's memory; a worker killed
mid-batch fails that batch alone and its partition serves again."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

import numbeam as nb

T = 15.0  # a worker's first start is a fresh interpreter
DEVICES = ["fake:0", "fake:1"]


def on_device(batch: nb.Tensor) -> dict[str, np.ndarray]:
    """Runs in a device worker: the input is a tensor on this worker's device."""
    assert isinstance(batch, nb.Tensor) and batch.device == nb.device() != "cpu"
    a = batch.array()
    n = len(a)
    dev = int(nb.device().split(":")[1])
    return {"y": a * 2, "device": np.full(n, dev), "pid": np.full(n, os.getpid())}


async def test_one_partition_per_device_in_its_worker() -> None:
    async with nb.Runtime(devices=DEVICES):
        await nb.Serving.start_link(on_device, name="dev", batch_size=4, devices="all")
        assert (await nb.serving.stats("dev"))["partitions"] == DEVICES
        # 8 inputs at once: two full batches leave together, one to each device.
        xs = [np.full(3, i, np.float32) for i in range(8)]
        rows = await nb.serving.run_batch("dev", xs, timeout=T)
        assert [r["y"].tolist() for r in rows] == [[2 * i] * 3 for i in range(8)]
        assert {int(r["device"]) for r in rows} == {0, 1}
        workers = nb.gpu.workers()
        assert {int(r["pid"]) for r in rows} == {workers[d]["os_pid"] for d in DEVICES}
        assert os.getpid() not in {int(r["pid"]) for r in rows}


async def test_a_killed_worker_fails_its_batch_and_the_partition_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    async with nb.Runtime(devices=DEVICES[:1]):
        pid = await nb.Serving.start_link(on_device, name="dev", batch_size=2, devices=["fake:0"])
        first = await nb.serving.run("dev", np.ones(2), timeout=T)
        os.kill(int(first["pid"]), signal.SIGKILL)
        # The next batch either went to the dead worker (CallError, noconnection) or, once the
        # partition has been started again, is served by the new one.
        for _ in range(50):
            try:
                row = await nb.serving.run("dev", np.ones(2), timeout=T)
            except nb.CallError as e:
                assert e.reason == "noconnection"
                continue
            break
        assert row["y"].tolist() == [2, 2] and int(row["pid"]) != int(first["pid"])
        assert nb.is_alive(pid)
