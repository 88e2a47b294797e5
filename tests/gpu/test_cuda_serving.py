"""nb.Serving on a real CUDA device (skipped without CuPy and a GPU): the partition runs in the
device's worker, the batch arrives as a CUDA tensor, `predict` returns a CuPy array, and each
caller gets its own row back as numpy. Run with the rest of the GPU checks by
``bench/gpu_check.sh``."""

from __future__ import annotations

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


def on_gpu(batch: nb.Tensor) -> object:
    import cupy

    assert batch.device == nb.device() and batch.device.startswith("cuda:")
    a = batch.array()
    assert isinstance(a, cupy.ndarray)
    return a * 2  # a CuPy array: made a tensor to cross back, split on the host


async def test_a_serving_on_a_cuda_device_answers_rows() -> None:
    async with nb.Runtime(devices=["cuda:0"]):
        await nb.Serving.start_link(on_gpu, name="gpu", batch_size=8, devices=["cuda:0"])
        xs = [np.full(4, i, np.float32) for i in range(20)]
        rows = await nb.serving.run_batch("gpu", xs, timeout=T)
        assert [r.tolist() for r in rows] == [[2.0 * i] * 4 for i in range(20)]
        assert (await nb.serving.stats("gpu"))["partitions"] == ["cuda:0"]
