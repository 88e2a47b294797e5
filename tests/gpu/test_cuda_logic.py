"""The Python side of `numbeam.gpu._cuda` without a GPU: CuPy's runtime and the calls made through
``cuda.bindings.driver`` replaced by stand-ins that keep "device memory" in host buffers, so
allocation, copies, both kinds of handle (legacy IPC and pool), the choice between them, the
wire's CUDA tag and the owner's ledger run here. (What CUDA itself does is tested in
test_cuda.py, on a GPU.)"""

from __future__ import annotations

import ctypes
import os
import types
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from msgpack import ExtType
from numbeam.gpu import _cuda, _devices
from numbeam.tensors import _share
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

    def setDevice(self, i: int) -> None:
        pass

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
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setenv(_cuda.ENV, "legacy")  # the pool path has tests of its own, below
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
        ["what", b"x" * 64, "k", 1, 8],
        ["ipc", b"x" * 64, "k", 1, 8, 9],
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


# ----------------------------------------------------------------------------- the pool path


class _Result(int):
    """A CUresult: an int with a name, as cuda.bindings' enums are."""

    @property
    def name(self) -> str:
        return "CUDA_SUCCESS" if self == 0 else f"CUDA_ERROR_{int(self)}"


_OK = _Result(0)
_BAD = _Result(1)


class _Driver:
    """The cuda.bindings.driver calls _cuda makes: (CUresult, value) tuples, pool memory in the
    stand-in runtime's host blocks, imported pointers the owner's (one process plays both)."""

    class CUresult:
        CUDA_SUCCESS = _OK

    class CUdevice_attribute:
        CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES = 119

    class CUmemAllocationHandleType:
        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR = 1

    class CUmemAllocationType:
        CU_MEM_ALLOCATION_TYPE_PINNED = 1

    class CUmemLocationType:
        CU_MEM_LOCATION_TYPE_DEVICE = 1

    class CUmemPool_attribute:
        CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4

    class CUmemAccess_flags:
        CU_MEM_ACCESS_FLAGS_PROT_NONE = 0
        CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3

    CUmemPoolProps = types.SimpleNamespace
    CUmemLocation = types.SimpleNamespace
    CUmemAccessDesc = types.SimpleNamespace
    CUmemPoolPtrExportData = types.SimpleNamespace

    class cuuint64_t:
        def __init__(self, v: int) -> None:
            self.v = v

    def __init__(self, rt: _Runtime, mask: int = 1) -> None:
        self.rt = rt
        self.mask = mask  # the devices' supported handle types
        self.calls: list[str] = []
        self.pools: dict[str, Any] = {}  # our pools: handle -> props
        self.thresholds: dict[str, int] = {}
        self.fds: list[int] = []
        self.imported_pools: list[tuple[int, str]] = []  # (descriptor, pool made of it)
        self.destroyed: list[str] = []
        self.imports: dict[int, int] = {}  # imported pointer -> times imported, not freed
        self.freed: list[int] = []  # our pool pointers
        self.freed_imports: list[int] = []
        self.set_access: list[Any] = []
        self.fail_import = False

    def cuInit(self, flags: int) -> tuple[Any]:
        return (_OK,)

    def cuDeviceGet(self, i: int) -> tuple[Any, int]:
        return _OK, i

    def cuDeviceGetAttribute(self, attr: int, dev: int) -> tuple[Any, int]:
        self.calls.append(f"attr {dev}")
        return _OK, self.mask

    def cuMemPoolCreate(self, props: Any) -> tuple[Any, str]:
        handle = f"pool{len(self.pools)}"
        self.pools[handle] = props
        return _OK, handle

    def cuMemPoolSetAttribute(self, pool: str, attr: int, value: Any) -> tuple[Any]:
        self.thresholds[pool] = value.v
        return (_OK,)

    def cuMemPoolExportToShareableHandle(self, pool: str, kind: int, flags: int) -> tuple[Any, int]:
        fd = os.open(os.devnull, os.O_RDONLY)
        self.fds.append(fd)
        return _OK, fd

    def cuMemAllocFromPoolAsync(self, size: int, pool: str, stream: int) -> tuple[Any, int]:
        self.calls.append(f"alloc {pool}")
        return _OK, self.rt.malloc(size)

    def cuStreamSynchronize(self, stream: int) -> tuple[Any]:
        self.calls.append("sync")
        return (_OK,)

    def cuMemPoolExportPointer(self, ptr: int) -> tuple[Any, Any]:
        return _OK, types.SimpleNamespace(reserved=ptr.to_bytes(8, "little") + bytes(56))

    def cuMemPoolImportFromShareableHandle(self, fd: int, kind: int, f: int) -> tuple[Any, Any]:
        assert type(fd) is int
        if self.fail_import:
            return _BAD, None
        handle = f"imported{len(self.imported_pools)}"
        self.imported_pools.append((fd, handle))
        return _OK, handle

    def cuMemPoolGetAccess(self, pool: str, loc: Any) -> tuple[Any, int]:
        return _OK, self.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_NONE

    def cuMemPoolSetAccess(self, pool: str, descs: list[Any], n: int) -> tuple[Any]:
        self.set_access.append((pool, descs[0].flags, descs[0].location.id))
        return (_OK,)

    def cuMemPoolImportPointer(self, pool: str, data: Any) -> tuple[Any, int | None]:
        if not pool.startswith("imported"):
            return _BAD, None
        ptr = int.from_bytes(data.reserved[:8], "little")
        self.imports[ptr] = self.imports.get(ptr, 0) + 1
        return _OK, ptr

    def cuMemFree(self, ptr: int) -> tuple[Any]:
        if self.imports.get(ptr):
            self.imports[ptr] -= 1
            self.freed_imports.append(ptr)
        else:
            self.rt.free(ptr)
            self.freed.append(ptr)
        return (_OK,)

    def cuMemPoolDestroy(self, pool: str) -> tuple[Any]:
        self.destroyed.append(pool)
        return (_OK,)


@pytest.fixture
def drv(rt: _Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Driver]:
    driver = _Driver(rt)
    monkeypatch.setattr(_cuda, "_drv", driver)
    monkeypatch.setattr(_cuda, "_drv_error", None)
    monkeypatch.setattr(_cuda, "_pools", {})
    monkeypatch.setattr(_cuda, "_imported_pools", {})
    monkeypatch.delenv(_cuda.ENV)
    monkeypatch.setattr(_share, "PASSES_DEVICE_FDS", True, raising=False)
    yield driver
    _cuda._pins.clear()
    _cuda._imported_pools.clear()
    for fd in driver.fds:
        os.close(fd)


def _pool_enc(peer: str | None) -> Encoder:
    enc = Encoder()
    enc.handle_seq = 1
    enc.peer = peer
    enc.segments = []
    return enc


def _passed(enc: Encoder) -> Any:
    """What the receiving node's claim gives for the batch's descriptors."""
    fds = [types.SimpleNamespace(fd=fd) for fd in enc.fds]
    return lambda seq: fds if seq == enc.handle_seq else None


def _cuda_handle(data: bytes) -> list[Any]:
    tag, *rest = msgpack.unpackb(data)
    assert tag == ExtType(21, b"")
    return rest[-1]  # type: ignore[no-any-return]


def test_path_chosen_per_device_at_first_use(drv: _Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cuda.ipc_path("cuda:0") == "pool"
    assert _cuda.ipc_path("cuda:0") == "pool"
    assert drv.calls == ["attr 0"]  # asked once per device
    drv.mask = 0  # (a device whose pools cannot export descriptors)
    assert _cuda.ipc_path("cuda:1") == "legacy"
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setenv(_cuda.ENV, "pool")
    with pytest.raises(RuntimeError, match="cuda:1 cannot share a memory pool"):
        _cuda.ipc_path("cuda:1")
    monkeypatch.setenv(_cuda.ENV, "legacy")
    drv.mask = 1
    assert _cuda.ipc_path("cuda:0") == "legacy"
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setenv(_cuda.ENV, "sometimes")
    with pytest.raises(ValueError, match="NUMBEAM_CUDA_IPC"):
        _cuda.ipc_path("cuda:0")
    # a descriptor channel that cannot pass a pool's descriptor: legacy, unless asked for
    monkeypatch.setattr(_share, "PASSES_DEVICE_FDS", False)
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setenv(_cuda.ENV, "auto")
    assert _cuda.ipc_path("cuda:0") == "legacy"
    monkeypatch.setenv(_cuda.ENV, "pool")
    assert _cuda.ipc_path("cuda:1") == "pool"
    # without cuda.bindings: legacy, unless the pool is asked for
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setattr(_cuda, "_drv", None)
    monkeypatch.setattr(_cuda, "_drv_error", "cuda.bindings is not installed")
    monkeypatch.setenv(_cuda.ENV, "auto")
    assert _cuda.ipc_path("cuda:0") == "legacy"
    monkeypatch.setattr(_cuda, "_paths", {})
    monkeypatch.setenv(_cuda.ENV, "pool")
    with pytest.raises(RuntimeError, match="not installed"):
        _cuda.ipc_path("cuda:0")


def test_legacy_forced_allocates_with_cuda_malloc(
    drv: _Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_cuda.ENV, "legacy")
    t = nb.tensor(np.arange(10.0), device="cuda:0")
    assert t._mem.pool is None and drv.pools == {}  # type: ignore[union-attr]
    assert _cuda_handle(_handle_msg(t, "b"))[0] == "ipc"


def test_one_pool_per_device(drv: _Driver, rt: _Runtime) -> None:
    src = np.arange(1000, dtype=np.float32)
    ts = [nb.tensor(src + k, device="cuda:0") for k in range(3)]
    u = nb.tensor(src, device="cuda:1")
    assert list(drv.pools) == ["pool0", "pool1"]
    assert [p.location.id for p in drv.pools.values()] == [0, 1]
    assert all(p.handleTypes == 1 and p.allocType == 1 for p in drv.pools.values())
    assert drv.thresholds == {
        "pool0": _cuda.POOL_RELEASE_THRESHOLD,
        "pool1": _cuda.POOL_RELEASE_THRESHOLD,
    }
    allocs = [c for c in drv.calls if c.startswith("alloc")]
    assert allocs == ["alloc pool0"] * 3 + ["alloc pool1"]
    # each allocation is complete before the buffer is handed out
    assert all(drv.calls[drv.calls.index(a) + 1] == "sync" for a in set(allocs))
    assert {t._mem.pool for t in ts} == {_cuda._pools[0]}  # type: ignore[union-attr]
    for k, t in enumerate(ts):
        np.testing.assert_array_equal(host(t), src + k)
    np.testing.assert_array_equal(host(u.to("cuda:0")), src)
    ptr = ts[0]._mem.addr  # type: ignore[union-attr]
    del ts
    assert ptr in drv.freed  # by cuMemFree


def test_pool_fd_passed_once_per_batch(drv: _Driver) -> None:
    a = nb.tensor(np.arange(10.0), device="cuda:0")
    b = nb.tensor(np.arange(20.0), device="cuda:0")
    c = nb.tensor(np.arange(30.0), device="cuda:1")
    enc = _pool_enc("b@host")
    ha = _cuda_handle(enc.encode(a, []))
    hb = _cuda_handle(enc.encode(b, []))
    hc = _cuda_handle(enc.encode(c, []))
    pool0, pool1 = _cuda._pools[0], _cuda._pools[1]
    assert enc.fds == [pool0.fd, pool1.fd]  # one per pool, however many buffers
    assert enc.segments == [pool0, pool1]  # (kept open until passed)
    assert [h[:2] for h in (ha, hb, hc)] == [["pool", 0], ["pool", 0], ["pool", 1]]
    assert ha[3] == _cuda._KEY and ha[4] == a._mem.id and ha[5] == a._mem.size  # type: ignore[union-attr]
    assert len(ha[2]) == 64
    # a new batch passes the descriptor again
    enc.fds, enc.fd_at, enc.segments = [], {}, []
    assert _cuda_handle(enc.encode(b, []))[:2] == ["pool", 0]
    assert enc.fds == [pool0.fd]
    assert _cuda.ledger() == {
        a._mem.id: {"b@host": 1},
        b._mem.id: {"b@host": 2},
        c._mem.id: {"b@host": 1},
    }  # type: ignore[union-attr]


def test_pool_buffer_staged_without_room_for_its_descriptor(drv: _Driver) -> None:
    from numbeam.tensors._share import MAX_FDS

    t = nb.tensor(np.arange(10.0), device="cuda:0")
    enc = _pool_enc("b")
    enc.fds.extend(range(1000, 1000 + MAX_FDS))
    tag = msgpack.unpackb(enc.encode(t, []))[0]
    assert tag == ExtType(18, b"") and enc.shared_bytes
    assert _cuda.ledger() == {}
    assert _cuda.BACKEND.export(t._mem, "b") is None  # no way to pass the descriptor


def test_pool_handle_to_this_process_is_the_buffer(drv: _Driver) -> None:
    t = nb.tensor(np.arange(100.0), device="cuda:0")
    enc = _pool_enc(None)
    data = enc.encode(t, [])
    dec = Decoder()
    dec.claim = _passed(enc)
    assert dec.decode(data)._mem is t._mem
    assert _cuda.ledger() == {} and drv.imported_pools == []


def test_pool_import_cached_counted_and_released(
    drv: _Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = np.arange(256, dtype=np.int32)
    t = nb.tensor(src, device="cuda:0")
    t2 = nb.tensor(src * 2, device="cuda:0")
    enc = _pool_enc("b@host")
    data, data2 = enc.encode(t, []), enc.encode(t2, [])
    buf_id, ptr = t._mem.id, t._mem.addr  # type: ignore[union-attr]
    owner = _cuda._KEY
    monkeypatch.setattr(_cuda, "_KEY", "someone-else")  # decoded as by another process
    sent: list[tuple[str | None, list[Any]]] = []
    _cuda.set_release_sender(lambda node, payload: sent.append((node, payload)))
    dec = Decoder()
    dec.peer = "a@host"
    dec.claim = _passed(enc)
    g1 = dec.decode(data)
    g2 = dec.decode(data)
    g3 = dec.decode(data2)
    assert g1._mem is g2._mem and g1._mem is not g3._mem and not g1._mem.own
    assert [fd for fd, _ in drv.imported_pools] == [_cuda._pools[0].fd]  # the pool: once
    assert drv.set_access == [("imported0", 3, 0)]  # made readable and writable on cuda:0
    assert drv.imports == {ptr: 1, t2._mem.addr: 1}  # type: ignore[union-attr]
    assert g1._mem.pool is g3._mem.pool
    np.testing.assert_array_equal(host(g1), src)
    np.testing.assert_array_equal(host(g3), src * 2)
    del g1, g2
    assert drv.freed_imports == [ptr] and ptr not in drv.freed
    assert sent == [("a@host", [owner, buf_id, 2])]
    monkeypatch.setattr(_cuda, "_KEY", owner)
    _cuda.release("b@host", sent[0][1])
    assert buf_id not in _cuda.ledger()
    del t
    assert ptr in drv.freed  # the owner frees after the importer did
    assert drv.destroyed == []  # the imported pool stays cached


def test_forgotten_owner_drops_its_imported_pool(
    drv: _Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = nb.tensor(np.arange(8.0), device="cuda:0")
    enc = _pool_enc("b")
    data = enc.encode(t, [])
    monkeypatch.setattr(_cuda, "_KEY", "someone-else")
    dec = Decoder()
    dec.peer = "a"
    dec.claim = _passed(enc)
    g = dec.decode(data)
    _cuda.forget_node("b")  # another node: nothing changes
    assert len(_cuda._imported_pools) == 1
    _cuda.forget_node("a")
    assert _cuda._imported_pools == {} and drv.destroyed == []  # g still holds it
    del g
    assert drv.destroyed == ["imported0"]
    # a later handle imports the pool again, from the descriptor its batch passes
    dec.decode(data)
    assert len(drv.imported_pools) == 2


def test_pool_pins_keep_the_buffer_until_released_or_forgotten(drv: _Driver) -> None:
    t = nb.tensor(np.zeros(64), device="cuda:0")
    ptr, buf_id = t._mem.addr, t._mem.id  # type: ignore[union-attr]
    for peer in ("b", "c"):
        _pool_enc(peer).encode(t, [])
    del t
    assert ptr not in drv.freed
    _cuda.release("b", [_cuda._KEY, buf_id, 1])
    assert ptr not in drv.freed
    _cuda.forget_node("c")
    assert ptr in drv.freed


def _pool_msg(handle: Any, seq: Any = 1) -> bytes:
    return msgpack.packb(
        [ExtType(21, b""), "f64", [1], "cuda:0", seq, 0, handle], use_bin_type=True
    )


@pytest.mark.parametrize(
    ("handle", "seq"),
    [
        (["pool", 0, b"x" * 64, "k", 1], 1),  # a field short
        (["pool", 0, b"x" * 64, "k", 1, 8, 9], 1),
        (["pool", "0", b"x" * 64, "k", 1, 8], 1),
        (["pool", -1, b"x" * 64, "k", 1, 8], 1),
        (["pool", 1, b"x" * 64, "k", 1, 8], 1),  # one descriptor passed
        (["pool", 0, b"x" * 64, "k", 1, 8], 2),  # its descriptors did not arrive
        (["pool", 0, b"x" * 64, "k", 1, 8], None),
        (["pool", 0, b"x" * 63, "k", 1, 8], 1),
        (["pool", 0, "x" * 64, "k", 1, 8], 1),
        (["pool", 0, b"x" * 64, 5, 1, 8], 1),
        (["pool", 0, b"x" * 64, "k", 1, 4], 1),  # smaller than the tensor
        (["pool", 0, b"x" * 64, _cuda._KEY, 10**9, 8], 1),  # our own, gone
        (["ipc", 0, b"x" * 64, "k", 1, 8], 1),
    ],
)
def test_malformed_pool_handles(drv: _Driver, handle: Any, seq: Any) -> None:
    dec = Decoder()
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        dec.claim = lambda s: [types.SimpleNamespace(fd=fd)] if s == 1 else None
        with pytest.raises(WireError):
            dec.decode(_pool_msg(handle, seq))
    finally:
        os.close(fd)
    assert drv.imported_pools == [] and drv.imports == {}


def test_pool_handles_the_driver_refuses(drv: _Driver) -> None:
    dec = Decoder()
    dec.claim = lambda s: [types.SimpleNamespace(fd="not a descriptor")]
    with pytest.raises(WireError, match="not one"):
        dec.decode(_pool_msg(["pool", 0, b"x" * 64, "k", 1, 8]))
    dec.claim = lambda s: [types.SimpleNamespace(fd=7)]
    drv.fail_import = True
    with pytest.raises(WireError, match="cuMemPoolImportFromShareableHandle failed"):
        dec.decode(_pool_msg(["pool", 0, b"x" * 64, "k", 1, 8]))
    assert _cuda._imported_pools == {} and drv.imports == {}
