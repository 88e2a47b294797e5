"""Tensors on real CUDA devices (skipped without CuPy and a GPU): making them, ``array()`` over
the same pointer, copies to the host, DLPack import, handles opened in a second process (a pool
buffer through the wire with its pool's descriptor passed, and a legacy IPC handle with
``NUMBEAM_CUDA_IPC=legacy``), and a peer copy between two GPUs."""

from __future__ import annotations

import os
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
    monkeypatch.setattr(_cuda, "_paths", {})  # each test chooses its path afresh


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


def test_legacy_handle_opened_in_a_second_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cuda.ENV, "legacy")
    src = np.arange(1000, dtype=np.float32)
    t = nb.tensor(src, device="cuda:0")
    assert _cuda.ipc_path("cuda:0") == "legacy" and t._mem.pool is None  # type: ignore[union-attr]
    handle = _cuda.BACKEND.export(t._mem, "child")
    assert handle is not None and handle[0] == "ipc"
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


def _pool_unsupported() -> str | None:
    try:
        return _cuda._pool_unsupported(0)
    except Exception as e:  # no driver bindings that work
        return str(e)


POOL_CHILD = textwrap.dedent(
    """
    import sys, types
    from numbeam.gpu import _cuda, _devices
    from numbeam.transport._wire import Decoder
    _devices.set_known(["cuda:0"])
    fd = int(sys.argv[1])
    released = []
    _cuda.set_release_sender(lambda node, payload: released.append((node, payload)))
    dec = Decoder()
    dec.peer = "owner"
    dec.claim = lambda seq: [types.SimpleNamespace(fd=fd)] if seq == 1 else None
    data = bytes.fromhex(sys.stdin.readline())
    t1 = dec.decode(data)
    t2 = dec.decode(data)  # imported once, counted twice
    assert t1._mem is t2._mem and t1._mem.pool is not None and not t1._mem.own
    total = int(t1.to("cpu").numpy().sum())
    del t1, t2  # cuMemFree here, then the release to the owner
    print(total, released[0][0], released[0][1][2], flush=True)
    """
)


def test_pool_buffer_through_the_wire_in_a_second_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    why = _pool_unsupported()
    if why is not None:
        pytest.skip(f"no IPC memory pool on cuda:0: {why}")
    monkeypatch.setenv(_cuda.ENV, "pool")
    src = np.arange(1000, dtype=np.float32)
    t = nb.tensor(src, device="cuda:0")
    assert _cuda.ipc_path("cuda:0") == "pool" and t._mem.pool is not None  # type: ignore[union-attr]
    enc = Encoder()
    enc.handle_seq = 1
    enc.peer = "child"
    enc.segments = []
    data = enc.encode(t, [])
    assert len(enc.fds) == 1 and enc.fds[0] == _cuda._pools[0].fd
    assert _cuda.ledger()[t._mem.id] == {"child": 1}  # type: ignore[union-attr]
    fd = enc.fds[0]
    proc = subprocess.run(
        [sys.executable, "-c", POOL_CHILD, str(fd)],
        input=data.hex() + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        pass_fds=[fd],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(int(src.sum())), "owner", "2"]
    _cuda.release("child", [_cuda._KEY, t._mem.id, 1])  # type: ignore[union-attr]
    assert t._mem.id not in _cuda.ledger()  # type: ignore[union-attr]
    del t  # freed (the importer freed its import first)
    u = nb.tensor(src, device="cuda:0")
    assert u._mem.pool is _cuda._pools[0]  # type: ignore[union-attr]
    np.testing.assert_array_equal(u.to("cpu").numpy(), src)


def test_pool_descriptor_through_the_descriptor_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from numbeam.tensors._share import FdChannel

    why = _pool_unsupported()
    if why is not None:
        pytest.skip(f"no IPC memory pool on cuda:0: {why}")
    monkeypatch.setenv(_cuda.ENV, "pool")
    nb.tensor(np.zeros(4), device="cuda:0")
    a, b = FdChannel(), FdChannel()
    try:
        b.allowed.add(os.getpid())
        a.send(b.address, 1, [_cuda._pools[0].fd])
        got = b.claim(os.getpid(), 1)
        assert got is not None and type(getattr(got[0], "fd", None)) is int
    finally:
        a.close()
        b.close()


def test_legacy_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_cuda.ENV, "legacy")
    t = nb.tensor(np.arange(10.0), device="cuda:0")
    assert t._mem.pool is None  # type: ignore[union-attr]
    dec = Decoder()
    enc = Encoder()
    enc.handle_seq = 1
    enc.segments = []
    got = dec.decode(enc.encode(t, []))  # sent to ourselves: the buffer itself
    assert got._mem is t._mem and enc.fds == []


@pytest.mark.skipif(_N_GPUS < 2, reason="needs two GPUs")
def test_peer_copy_between_two_gpus() -> None:
    src = np.arange(1 << 20, dtype=np.float32)
    t = nb.tensor(src, device="cuda:0")
    u = t.to("cuda:1")
    assert u.device == "cuda:1" and u.array().device.id == 1
    np.testing.assert_array_equal(u.to("cpu").numpy(), src)
