"""Actors pinned to devices: a two-stage numerical pipeline with one stage per device.

Each device gets a worker node of its own (an OS process). A supervisor of this node keeps a
`Layer` server pinned to each device: the layer holds its weights in that device's memory and
turns a batch into ``tanh(x @ W)``, a new tensor on its device. Batches go from stage to
stage as device tensors: to a process on the same device they cross as a handle to the same
memory, to another device they are copied once, device to device.

Midway, the worker of the first device is killed with SIGKILL, as a CUDA fault or the
out-of-memory killer would. The supervisor restarts its layer on the new worker, the batch
that was in flight is sent again, and every result is checked against numpy on the CPU.

It runs on CUDA devices when CuPy finds some, on two fake (CPU-backed) devices otherwise, and
says which. The code is the same: ``t.array()`` is a CuPy array on a GPU, numpy elsewhere.

    python examples/devices.py
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np

import numbeam as nb

DIM = 256
BATCHES = 8
KILL_AT = 3  # the batch before which the first device's worker is killed


def array_module(a: Any) -> Any:
    """numpy for numpy arrays, CuPy for CuPy arrays: device-generic code."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def weights(stage: int) -> np.ndarray:
    return np.random.default_rng(stage).standard_normal((DIM, DIM)).astype(np.float32) / 16


class Layer(nb.GenServer):
    """``tanh(x @ W)`` on the device this server is pinned to."""

    async def init(self, stage: int) -> None:
        self.stage = stage
        self.w = nb.tensor(weights(stage), device=nb.device())  # lives on this device

    async def handle_call(self, request: Any, caller: Any) -> Any:
        _, x = request  # ("apply", tensor): a tensor on this device, however it came
        a, w = x.array(), self.w.array()
        xp = array_module(a)
        out = nb.tensors.build(
            x.shape, "f32", lambda out: xp.tanh(a @ w, out=out), device=nb.device()
        )
        return (nb.device(), os.getpid(), out)


def pick_devices() -> tuple[list[str], str]:
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no CuPy, no driver, no GPU
        n = 0
    if n:
        return [f"cuda:{i}" for i in range(min(n, 2))], "CUDA"
    return ["fake:0", "fake:1"], "fake devices (no CUDA here)"


async def layer_pid(sup: nb.Pid, stage: int) -> nb.Pid:
    """The running layer of `stage`, waiting while its supervisor restarts it."""
    while True:
        for child_id, pid, _ in await nb.Supervisor.which_children(sup):
            if child_id == f"layer{stage}" and pid is not None:
                return pid
        await asyncio.sleep(0.01)


async def main(kind: str) -> None:
    devices = nb.devices()
    first, last = devices[0], devices[-1]
    print(f"running on {kind}: {', '.join(devices)}")
    sup = await nb.Supervisor.start_link(
        [
            nb.Child(Layer, args=(0,), id="layer0", device=first),
            nb.Child(Layer, args=(1,), id="layer1", device=last),
        ],
        intensity=3,
        period=10.0,
    )
    w0, w1 = weights(0), weights(1)
    rng = np.random.default_rng(42)
    for i in range(BATCHES):
        x_cpu = rng.standard_normal((64, DIM)).astype(np.float32)
        x = nb.tensor(x_cpu, device=first)
        if i == KILL_AT:
            worker = nb.gpu.workers()[first]
            os.kill(worker["os_pid"], signal.SIGKILL)
            print(f"batch {i}: killed the worker of {first} (os pid {worker['os_pid']})")
        while True:
            try:
                dev0, pid0, h = await nb.call(await layer_pid(sup, 0), ("apply", x), timeout=30)
                dev1, pid1, y = await nb.call(await layer_pid(sup, 1), ("apply", h), timeout=30)
                break
            except nb.CallError as e:  # the layer died with its worker: send the batch again
                print(f"batch {i}: stage lost ({e.reason}); the supervisor restarts it")
        expected = np.tanh(np.tanh(x_cpu @ w0) @ w1)
        got = y.to("cpu").numpy()
        assert np.allclose(got, expected, atol=1e-4), "wrong result"
        print(
            f"batch {i}: {dev0} (os pid {pid0}) -> {dev1} (os pid {pid1}), result on "
            f"{y.device}, matches numpy: {np.allclose(got, expected, atol=1e-4)}"
        )
    restarts = ", ".join(f"{d}: {w['restarts']}" for d, w in nb.gpu.workers().items())
    print(f"worker restarts: {restarts}")
    print(f"all {BATCHES} batches correct")


if __name__ == "__main__":  # (device workers import this file to find Layer: keep this guard)
    devices, kind = pick_devices()
    nb.run(main, kind, devices=devices)
