"""Device workers on real CUDA devices (skipped without CuPy and a GPU): the worker's current
device, a 1 GB device tensor handed to the worker without a copy (the worker reads the same
device pointer), a worker SIGKILLed while it imports memory of ours (device memory back to
baseline), an illegal-address kernel in one worker (that worker restarts, the others keep
running), and a tensor moved between two GPUs' workers with one peer copy.

Run with the rest of the GPU checks by ``bench/gpu_check.sh``.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    _N_GPUS = int(cupy.cuda.runtime.getDeviceCount())
except Exception:  # no driver, no device
    _N_GPUS = 0
if _N_GPUS == 0:
    pytest.skip("no CUDA device", allow_module_level=True)

import numbeam as nb  # noqa: E402

pytestmark = pytest.mark.gpu
T = 60.0  # a worker's start includes creating its CUDA context
CUDA = [f"cuda:{i}" for i in range(_N_GPUS)]
GB = 1 << 30


async def where(parent: nb.Pid) -> None:
    import cupy

    nb.send(parent, ("where", nb.device(), int(cupy.cuda.runtime.getDevice()), os.getpid()))


async def pointer_of(parent: nb.Pid) -> None:
    """Answers each tensor with its device pointer's attributes and a checksum."""
    import cupy

    held = []
    while True:
        t = await nb.receive()
        held.append(t)
        a = t.array()
        attrs = cupy.cuda.runtime.pointerGetAttributes(a.data.ptr)
        nb.send(parent, ("ptr", t.device, int(attrs.device), float(a[:1024].sum()), t.nbytes))


async def crash_with_an_illegal_address() -> None:
    import cupy

    kernel = cupy.RawKernel(r'extern "C" __global__ void poke(float* p) { p[0] = 1.0f; }', "poke")
    kernel((1,), (1,), (cupy.uint64(8),))  # writes to address 8: cudaErrorIllegalAddress
    cupy.cuda.runtime.deviceSynchronize()


class Answer(nb.GenServer):
    async def init(self, notify: nb.Pid) -> None:
        nb.send(notify, ("up", nb.self(), nb.device(), os.getpid()))

    async def handle_call(self, request: Any, caller: Any) -> Any:
        import cupy

        return float(cupy.arange(10).sum())


def _free(device: int) -> int:
    with cupy.cuda.Device(device):
        free, _ = cupy.cuda.runtime.memGetInfo()
    return int(free)


async def test_each_worker_runs_on_its_own_cuda_device() -> None:
    async with nb.Runtime(devices=CUDA):
        for i, d in enumerate(CUDA):
            nb.spawn(where, nb.self(), device=d)
            _, dev, current, os_pid = await nb.receive(
                lambda m: type(m) is tuple and m[0] == "where", timeout=T
            )
            assert (dev, current) == (d, i)
            assert os_pid != os.getpid()


async def test_a_1gb_device_tensor_reaches_the_worker_without_a_copy() -> None:
    async with nb.Runtime(devices=CUDA):
        pid = nb.spawn(pointer_of, nb.self(), device="cuda:0")
        t = nb.tensors.build(GB // 4, "f32", lambda out: out.fill(1.0), device="cuda:0")
        before = _free(0)
        nb.send(pid, t)
        _, dev, ptr_dev, total, nbytes = await nb.receive(
            lambda m: type(m) is tuple and m[0] == "ptr", timeout=T
        )
        assert (dev, ptr_dev, total, nbytes) == ("cuda:0", 0, 1024.0, GB)
        # No second gigabyte was taken on the device: the worker mapped ours.
        assert before - _free(0) < GB // 4


async def test_device_memory_comes_back_after_an_importer_is_killed() -> None:
    async with nb.Runtime(devices=CUDA):
        pid = nb.spawn(pointer_of, nb.self(), device="cuda:0")
        nb.spawn(where, nb.self(), device="cuda:0")
        *_, os_pid = await nb.receive(lambda m: type(m) is tuple and m[0] == "where", timeout=T)
        baseline = _free(0)
        t = nb.tensors.build(256 << 20, "f32", lambda out: out.fill(2.0), device="cuda:0")
        nb.send(pid, t)
        await nb.receive(lambda m: type(m) is tuple and m[0] == "ptr", timeout=T)
        ref = nb.monitor(pid)
        os.kill(os_pid, signal.SIGKILL)
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "noconnection"
        del t
        cupy.get_default_memory_pool().free_all_blocks()
        assert abs(_free(0) - baseline) < 64 << 20


async def test_an_illegal_address_restarts_that_worker_only() -> None:
    async with nb.Runtime(devices=CUDA):
        me = nb.self()
        sup = await nb.Supervisor.start_link(
            [nb.Child(Answer, args=(me,), id=d, device=d) for d in CUDA]
        )
        ups = [
            await nb.receive(lambda m: type(m) is tuple and m[0] == "up", timeout=T) for _ in CUDA
        ]
        first = {u[2]: u for u in ups}["cuda:0"]
        _, crashing = nb.spawn_monitor(crash_with_an_illegal_address, device="cuda:0")
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == crashing, timeout=T)
        assert down.reason != "normal"
        _, pid, dev, os_pid = await nb.receive(
            lambda m: type(m) is tuple and m[0] == "up", timeout=T
        )
        assert dev == "cuda:0" and os_pid != first[3]
        assert await nb.call(pid, "sum", timeout=T) == 45.0
        assert nb.gpu.workers()["cuda:0"]["restarts"] == 1
        for u in ups:
            if u[2] != "cuda:0":
                assert await nb.call(u[1], "sum", timeout=T) == 45.0  # the others kept running
        assert nb.is_alive(sup)


@pytest.mark.skipif(_N_GPUS < 2, reason="needs two GPUs")
async def test_a_tensor_sent_to_the_other_gpus_worker_is_copied_there() -> None:
    async with nb.Runtime(devices=CUDA[:2]):
        pid = nb.spawn(pointer_of, nb.self(), device="cuda:1")
        t = nb.tensor(np.ones(1 << 20, np.float32), device="cuda:0")
        nb.send(pid, t)
        _, dev, ptr_dev, total, _ = await nb.receive(
            lambda m: type(m) is tuple and m[0] == "ptr", timeout=T
        )
        assert (dev, ptr_dev, total) == ("cuda:1", 1, 1024.0)
