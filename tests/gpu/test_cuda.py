"""Tensors on real CUDA devices (skipped without CuPy and a GPU): making them, ``array()`` over
the same pointer, copies to the host, DLPack import, a handle opened in a second process, and a
peer copy between two GPUs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    _N_GPUS = int(cupy.cuda.runtime.getDeviceCount())
except Exception:  # no driver, no device
    _N_GPUS = 0
if _N_GPUS == 0:
    pytest.skip("no CUDA device", allow_module_level=True)

from numbeam.gpu import _cuda, _devices  # noqa: E402
from numbeam.transport._wire import Decoder, Encoder  # noqa: E402

import numbeam as nb  # noqa: E402

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]
CUDA = [f"cuda:{i}" for i in range(_N_GPUS)]


@pytest.fixture(autouse=True)
def cuda_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_devices, "_known", list(CUDA))
    monkeypatch.setattr(_devices, "_current", "cpu")


@pytest.mark.parametrize("name", ["u8", "s32", "f16", "f32", "f64", "c64"])
def test_tensor_on_cuda_0(name: str) -> None:
    src = (np.arange(1000) % 100).astype(nb.tensors.DTYPES[name])
    t = nb.tensor(src, device="cuda:0")
    assert (t.device, t.dtype, t.shape) == ("cuda:0", name, (1000,))
    assert t.__dlpack_device__() == (2, 0)
    a = t.array()
    assert isinstance(a, cupy.ndarray)
    assert a.data.ptr == t._mem.addr  # type: ignore[union-attr]
    np.testing.assert_array_equal(cupy.asnumpy(a), src)
    back = t.to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.numpy(), src)
    with pytest.raises(TypeError, match="to\\('cpu'\\)"):
        t.numpy()
    assert "device: cuda:0" in repr(t)


def test_build_on_cuda() -> None:
    t = nb.tensors.build((4, 4), "f32", lambda out: out.fill(2.0), device="cuda:0")
    np.testing.assert_array_equal(t.to("cpu").numpy(), np.full((4, 4), 2.0, np.float32))


def test_from_dlpack_of_a_cupy_array() -> None:
    x = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    t = nb.tensors.from_dlpack(x)
    assert (t.device, t.shape, t.dtype) == ("cuda:0", (3, 4), "f32")
    np.testing.assert_array_equal(t.to("cpu").numpy(), cupy.asnumpy(x))
    y = cupy.from_dlpack(t)
    assert y.data.ptr == t._mem.addr  # type: ignore[union-attr]


def test_staged_round_trip() -> None:
    t = nb.tensor(np.arange(100_000, dtype=np.float32), device="cuda:0")
    frames: list = []
    got = Decoder().decode(Encoder().encode(t, frames), frames)
    assert got.device == "cuda:0" and got._mem.addr != t._mem.addr
    np.testing.assert_array_equal(got.to("cpu").numpy(), t.to("cpu").numpy())


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from numbeam.gpu import _cuda, _devices
    _devices.set_known(["cuda:0"])
    handle = [h if not isinstance(h, str) or i != 1 else bytes.fromhex(h)
              for i, h in enumerate(eval(sys.stdin.read()))]
    buf = _cuda.BACKEND.import_handle("cuda:0", handle, 4000, "owner")
    out = np.empty(1000, np.float32)
    _cuda.BACKEND.to_host(buf, 0, out)
    print(buf.addr != 0, int(out.sum()), flush=True)
    """
)


def test_handle_opened_in_a_second_process() -> None:
    src = np.arange(1000, dtype=np.float32)
    t = nb.tensor(src, device="cuda:0")
    handle = _cuda.BACKEND.export(t._mem, "child")
    assert _cuda.ledger()[t._mem.id] == {"child": 1}  # type: ignore[union-attr]
    text = repr([h.hex() if isinstance(h, bytes) else h for h in handle])
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", str(int(src.sum()))]
    _cuda.forget_node("child")
    assert t._mem.id not in _cuda.ledger()  # type: ignore[union-attr]


@pytest.mark.skipif(_N_GPUS < 2, reason="needs two GPUs")
def test_peer_copy_between_two_gpus() -> None:
    src = np.arange(1 << 20, dtype=np.float32)
    t = nb.tensor(src, device="cuda:0")
    u = t.to("cuda:1")
    assert u.device == "cuda:1" and u.array().device.id == 1
    np.testing.assert_array_equal(u.to("cpu").numpy(), src)
