"""The Python side of `numbeam.gpu._cuda` without a GPU: CuPy's runtime replaced by a stand-in
that keeps "device memory" in host buffers, so allocation, copies, handles, the wire's CUDA tag
and the owner's ledger run here. (What CUDA itself does is tested in test_cuda.py, on a GPU.)"""

from __future__ import annotations

import ctypes
import types
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from msgpack import ExtType
from numbeam.gpu import _cuda, _devices
from numbeam.transport import _wire
from numbeam.transport._wire import Decoder, Encoder, WireError

import numbeam as nb


class _Runtime:
    """The few cupy.cuda.runtime calls _cuda makes, on host memory."""

    memcpyHostToDevice, memcpyDeviceToHost, memcpyDeviceToDevice = 1, 2, 3

    class CUDARuntimeError(RuntimeError):
        pass

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array[Any]] = {}
        self.freed: list[int] = []
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.peer_copies = 0

    def malloc(self, size: int) -> int:
        block = (ctypes.c_char * size)()
        self.blocks[ctypes.addressof(block)] = block
        return ctypes.addressof(block)

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]
        self.freed.append(ptr)

    def memcpy(self, dst: int, src: int, size: int, kind: int) -> None:
        ctypes.memmove(dst, src, size)

    def memcpyPeer(self, dst: int, dst_dev: int, src: int, src_dev: int, size: int) -> None:
        self.peer_copies += 1
        ctypes.memmove(dst, src, size)

    def deviceCanAccessPeer(self, a: int, b: int) -> int:
        return 1

    def deviceEnablePeerAccess(self, peer: int) -> None:
        pass

    def ipcGetMemHandle(self, ptr: int) -> bytes:
        return ptr.to_bytes(8, "little") + bytes(56)

    def ipcOpenMemHandle(self, handle: bytes) -> int:
        ptr = int.from_bytes(handle[:8], "little")
        self.opened.append(ptr)
        return ptr

    def ipcCloseMemHandle(self, ptr: int) -> None:
        self.closed.append(ptr)


class _Device:
    def __init__(self, i: int) -> None:
        self.id = i

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Runtime]:
    runtime = _Runtime()
    stub = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=_Device))
    monkeypatch.setattr(_cuda, "_cp", stub)
    monkeypatch.setattr(_devices, "_known", ["cuda:0", "cuda:1"])
    monkeypatch.setattr(_devices, "_current", "cpu")
    monkeypatch.setattr(_wire, "cuda_count", lambda: 2)
    monkeypatch.setattr(_cuda, "_release_sender", None)
    yield runtime
    _cuda._pins.clear()


def host(t: nb.Tensor) -> np.ndarray:
    return t.to("cpu").numpy()


def test_make_copy_and_free(rt: _Runtime) -> None:
    src = np.arange(1000, dtype=np.float32)
    base = nb.tensors.stats()["devices"].get("cuda:0", {"buffers": 0, "bytes": 0})
    t = nb.tensor(src, device="cuda:0")
    assert t.device == "cuda:0" and t.__dlpack_device__() == (2, 0)
    assert isinstance(t._mem, _cuda.CudaBuffer)
    np.testing.assert_array_equal(host(t), src)
    u = t.to("cuda:1")
    assert u.device == "cuda:1" and rt.peer_copies == 1
    np.testing.assert_array_equal(host(u), src)
    with pytest.raises(TypeError, match="to\\('cpu'\\)"):
        t.numpy()
    s = nb.tensors.stats()["devices"]["cuda:0"]
    assert s["buffers"] == base["buffers"] + 1 and s["bytes"] == base["bytes"] + src.nbytes
    ptr = t._mem.addr  # type: ignore[union-attr]
    del t
    assert ptr in rt.freed
    assert nb.tensors.stats()["devices"]["cuda:0"]["buffers"] == base["buffers"]


def test_staged_through_the_wire(rt: _Runtime) -> None:
    src = np.arange(100_000, dtype=np.float32)
    t = nb.tensor(src, device="cuda:1")
    frames: list[Any] = []
    got = Decoder().decode(Encoder().encode(t, frames), frames)
    assert len(frames) == 1
    assert got.device == "cuda:1" and got._mem is not t._mem
    np.testing.assert_array_equal(host(got), src)


def _handle_msg(t: nb.Tensor, peer: str | None) -> bytes:
    enc = Encoder()
    enc.handle_seq = 1
    enc.peer = peer
    return enc.encode(t, [])


def test_handle_to_this_process_is_the_buffer(rt: _Runtime) -> None:
    t = nb.tensor(np.arange(100, dtype=np.float64), device="cuda:0")
    data = _handle_msg(t, None)
    assert _cuda.ledger() == {t._mem.id: {None: 1}}  # type: ignore[union-attr]
    got = Decoder().decode(data)
    assert got._mem is t._mem
    assert _cuda.ledger() == {}  # not held by any other process
    assert nb.tensors.stats()["devices"]["cuda:0"]["exported"] >= 1


def test_handle_from_another_process_and_its_release(
    rt: _Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = np.arange(256, dtype=np.int32)
    t = nb.tensor(src, device="cuda:0")
    data = _handle_msg(t, "b@host")
    buf_id = t._mem.id  # type: ignore[union-attr]
    assert _cuda.ledger() == {buf_id: {"b@host": 1}}
    # Pretend the handle came from another process (this one gets another owner key).
    owner = _cuda._KEY
    monkeypatch.setattr(_cuda, "_KEY", "someone-else")
    sent: list[tuple[str | None, list[Any]]] = []
    _cuda.set_release_sender(lambda node, payload: sent.append((node, payload)))
    dec = Decoder()
    dec.peer = "a@host"
    g1 = dec.decode(data)
    g2 = dec.decode(data)  # opened once per process
    assert g1._mem is g2._mem and len(rt.opened) == 1
    assert g1._mem.addr == t._mem.addr and not g1._mem.own  # type: ignore[union-attr]
    np.testing.assert_array_equal(host(g1), src)
    assert nb.tensors.stats()["devices"]["cuda:0"]["imported"] >= 1
    del g1, g2
    assert rt.closed == [t._mem.addr]  # type: ignore[union-attr]
    assert sent == [("a@host", [owner, buf_id, 2])]
    # the owner side gets the release (from the node it sent the handle to)
    monkeypatch.setattr(_cuda, "_KEY", owner)
    _cuda.release("b@host", sent[0][1])
    assert _cuda.ledger() == {}


def test_pins_keep_the_buffer_until_released_or_forgotten(rt: _Runtime) -> None:
    t = nb.tensor(np.zeros(64), device="cuda:0")
    ptr, buf_id = t._mem.addr, t._mem.id  # type: ignore[union-attr]
    for peer in ("b", "b", "c"):
        _handle_msg(t, peer)
    del t
    assert ptr not in rt.freed  # importers may still map it
    _cuda.release("b", [_cuda._KEY, buf_id, 1])
    _cuda.release("b", ["not-us", buf_id, 5])  # stale and bad payloads are ignored
    _cuda.release("b", "junk")
    assert _cuda.ledger() == {buf_id: {"b": 1, "c": 1}}
    _cuda.release("b", [_cuda._KEY, buf_id, 1])
    assert ptr not in rt.freed
    _cuda.forget_node("c")
    assert _cuda.ledger() == {}
    assert ptr in rt.freed


@pytest.mark.parametrize(
    "handle",
    [
        None,
        [],
        ["pool", b"x" * 64, "k", 1, 8],
        ["ipc", b"x" * 63, "k", 1, 8],
        ["ipc", "x" * 64, "k", 1, 8],
        ["ipc", b"x" * 64, 5, 1, 8],
        ["ipc", b"x" * 64, "k", "1", 8],
        ["ipc", b"x" * 64, "k", 1, 0],
        ["ipc", b"x" * 64, "k", 1, 4],  # smaller than the tensor
    ],
)
def test_malformed_cuda_handles(rt: _Runtime, handle: Any) -> None:
    msg = msgpack.packb([ExtType(21, b""), "f64", [1], "cuda:0", 1, 0, handle], use_bin_type=True)
    with pytest.raises(WireError):
        Decoder().decode(msg)
    assert rt.opened == []
