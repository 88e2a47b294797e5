"""Every CUDA call numbeam makes, through CuPy and (for pools) ``cuda.bindings.driver``, behind
the `numbeam.gpu._backend` interface.

Imported only when a ``cuda:*`` device is used; CuPy itself is imported on the first call, and
``cuda.bindings.driver`` (package ``cuda-bindings``, the ``cuda12``/``cuda13`` extras) the first
time a device's path is chosen.

**Memory.** Each tensor buffer is an allocation of its own (`CudaBuffer`, never a sub-allocation
of CuPy's pool: a handle names a whole allocation), freed when the last tensor, array or
importer holding it is gone. ``array()`` is a ``cupy.ndarray`` over it (``UnownedMemory`` whose
owner is the buffer, so the array keeps it alive). Host copies are ``cudaMemcpy``; device to
device on one GPU a ``cudaMemcpy``, across GPUs ``cudaMemcpyPeer`` after
``cudaDeviceEnablePeerAccess`` where ``cudaDeviceCanAccessPeer`` allows (else the driver stages
it). Every copy is complete when the call returns.

**Two ways to share a buffer with another process, chosen per device at its first use.**

*Pool* (preferred): one stream-ordered memory pool per process and device, made on first use
with ``cuMemPoolCreate`` (pinned device memory, ``handleTypes`` =
``CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR``) and a release threshold
(``CU_MEMPOOL_ATTR_RELEASE_THRESHOLD``, `POOL_RELEASE_THRESHOLD` bytes); its descriptor is
exported once (``cuMemPoolExportToShareableHandle``) and kept open. A buffer is
``cuMemAllocFromPoolAsync`` on the legacy default stream, then ``cuStreamSynchronize`` (the
allocation must be complete before anyone, here or in an importer, touches it); it is freed
with a device synchronize and ``cuMemFree`` (which, for pool memory, does not synchronize by
itself). `export` gives ``["pool", fd_index, export_data, owner, id, size]``: the pool's
descriptor goes ahead of the batch like a segment's (once per pool per batch: the encoder's
``fds``), ``fd_index`` is its index there, ``export_data`` the 64-byte
``CUmemPoolPtrExportData`` of ``cuMemPoolExportPointer``. `import_handle` makes the peer's
pool with ``cuMemPoolImportFromShareableHandle`` once per (owner, device), cached until that
owner's node is forgotten (and while a buffer of it lives), and checks the pool's access for
the device (``cuMemPoolGetAccess``, ``cuMemPoolSetAccess`` read-write where it is not);
each buffer is ``cuMemPoolImportPointer``-ed once per process, cached and counted like a
legacy one, and freed (device synchronize, ``cuMemFree``) when the last holder here is gone.
The path is the pool where ``CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES`` has the
POSIX descriptor bit, ``cuda.bindings`` imports and the descriptor channel can pass a pool's
descriptor (`numbeam.tensors._share` sets ``PASSES_DEVICE_FDS``: its ``claim`` must hand such a
descriptor back unmapped, with its ``fd``); the legacy path otherwise.

*Legacy CUDA IPC* (fallback): buffers are ``cudaMalloc`` (freed with ``cudaFree``); `export`
gives ``["ipc", handle, owner, id, size]``: the 64-byte ``cudaIpcGetMemHandle`` of the buffer,
this process's random key, the buffer's id and its size. `import_handle` opens it with
``cudaIpcOpenMemHandle`` (lazy peer access), once per process: a second handle to the same
buffer reuses the opened pointer; ``cudaIpcCloseMemHandle`` when the last holder here is gone.

``NUMBEAM_CUDA_IPC`` (read at each device's first use) forces a path: ``pool`` (an error at
first use where the pool cannot be had), ``legacy``; unset, empty or ``auto`` chooses as above.
An importer opens whichever kind of handle it gets (a pool handle needs ``cuda.bindings``).

**The ledger, for both paths.** Nothing in the kernel counts legacy IPC importers, and freeing
memory an importer still maps is undefined behaviour; for pools the driver's documentation says
the same in so many words (``cuMemPoolImportPointer``: "The imported memory must be freed from
all importing processes before being freed in the exporting process"; with ``cuMemFreeAsync``
"the free must be completed on the importing process before the free operation on the exporting
process"). It says nothing of an importer's mapping outliving an exporter that *dies*, so
nothing here counts on it. Hence the owner keeps a **ledger**: each export pins the buffer for
the node it goes to (`Encoder.peer`, None when the node does not say). An importer counts the
handles it decoded for each buffer; when it frees or closes the buffer it calls the *release
sender* (installed by the distribution layer with `set_release_sender`) with the owner's node
(`Decoder.peer`) and ``[owner, id, count]``; the owner's node passes that to `release`, which
unpins ``count``. A node that goes down is forgotten with `forget_node`: its pins go (and the
pools imported from it, once no buffer of theirs is left). A buffer is freed when it is neither
referenced nor pinned. Bounds: pins of a node the layer does not name (``peer`` None), or whose
release never arrives, last until that node is forgotten or this process exits. The driver
documents that IPC pools do not give physical memory back to the OS at all for now
(``cuMemPoolTrimTo`` is a no-op, the release threshold "effectively gets ignored"): freed pool
memory is reused by later allocations of this process, not returned, until it exits.

A handle decoded in the process that made it (tests, or a node sending to itself) is the
buffer itself, not opened. A handle of an imported buffer is never re-exported (its owner could
not account for the third process): such tensors cross as staged host bytes. So does a pool
buffer when the batch has no room for one more descriptor.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from numbeam.tensors._dtypes import DTYPES, resolve_dtype
from numbeam.tensors._memory import device_counters

__all__ = [
    "BACKEND",
    "ENV",
    "POOL_RELEASE_THRESHOLD",
    "CudaBuffer",
    "forget_node",
    "ipc_path",
    "ledger",
    "release",
    "set_release_sender",
]

log = logging.getLogger("numbeam")

ENV = "NUMBEAM_CUDA_IPC"
POOL_RELEASE_THRESHOLD = 4 << 20  # bytes a pool may keep reserved (ignored for IPC pools today)
_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t) == sizeof(CUmemPoolPtrExportData)
_KEY = os.urandom(8).hex()  # this process, as an owner of buffers
_BF16 = DTYPES["bf16"]

_lock = threading.RLock()
_cp: Any = None
_drv: Any = None  # cuda.bindings.driver, once imported
_drv_error: str | None = None  # why it could not be, once tried
_next_id = 0
_live: weakref.WeakValueDictionary[int, CudaBuffer] = weakref.WeakValueDictionary()
# Owner side: buffer id -> (buffer, {importing node: handles sent}).
_pins: dict[int, tuple[CudaBuffer, dict[str | None, int]]] = {}
# Importer side: (owner key, buffer id) -> the buffer opened here.
_opened: weakref.WeakValueDictionary[tuple[str, int], CudaBuffer] = weakref.WeakValueDictionary()
_peer_enabled: set[tuple[int, int]] = set()
_release_sender: Callable[[str | None, list[Any]], None] | None = None
# Per device index: "pool" or "legacy", chosen at first use; this process's pool there.
_paths: dict[int, str] = {}
_pools: dict[int, _Pool] = {}
# Importer side: (owner key, device index) -> that owner's pool, imported here.
_imported_pools: dict[tuple[str, int], _ImportedPool] = {}


def _cupy() -> Any:
    global _cp
    if _cp is None:
        import cupy  # type: ignore[import-not-found]

        _cp = cupy
    return _cp


def _driver() -> Any:
    """``cuda.bindings.driver`` (initialised), or None when it cannot be imported."""
    global _drv, _drv_error
    if _drv is None and _drv_error is None:
        try:
            from cuda.bindings import driver  # type: ignore[import-not-found]
        except ImportError as e:
            _drv_error = f"cuda.bindings is not installed ({e})"
            return None
        _check(driver, driver.cuInit(0), "cuInit")
        _drv = driver
    return _drv


class CudaDriverError(RuntimeError):
    """A driver call that did not return CUDA_SUCCESS."""


def _check(drv: Any, result: tuple[Any, ...], what: str) -> Any:
    """The value of a ``cuda.bindings`` call, whose result is ``(CUresult, *values)``."""
    err = result[0]
    if err != drv.CUresult.CUDA_SUCCESS:
        name = getattr(err, "name", err)
        raise CudaDriverError(f"{what} failed: {name}")
    if len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def _index(device: str) -> int:
    return int(device[5:])


@contextmanager
def _context(i: int) -> Iterator[None]:
    """Device ``i`` current, with its primary context made current for driver calls
    (``cudaSetDevice`` initialises it, CUDA 12 and later)."""
    cp = _cupy()
    with cp.cuda.Device(i):
        cp.cuda.runtime.setDevice(i)
        yield


# ----------------------------------------------------------------------------- which path


def ipc_path(device: str) -> str:
    """``"pool"`` or ``"legacy"``: how buffers of ``device`` are made and shared by this
    process, chosen at the device's first use (see the module doc, and ``NUMBEAM_CUDA_IPC``)."""
    i = _index(device)
    path = _paths.get(i)
    if path is None:
        with _lock:
            path = _paths.get(i)
            if path is None:
                path = _paths[i] = _choose_path(i)
    return path


def _choose_path(i: int) -> str:
    want = os.environ.get(ENV, "").strip().lower() or "auto"
    if want not in ("auto", "pool", "legacy"):
        raise ValueError(f"{ENV} must be pool, legacy or auto, not {want!r}")
    if want == "legacy":
        return "legacy"
    why = _pool_unsupported(i)
    if why is None and want == "auto" and not _channel_passes_pool_fds():
        why = "the descriptor channel (numbeam.tensors._share) cannot pass a pool's descriptor yet"
    if why is None:
        return "pool"
    if want == "pool":
        raise RuntimeError(f"{ENV}=pool, but cuda:{i} cannot share a memory pool: {why}")
    log.debug("devices: cuda:%d shares memory by legacy CUDA IPC: %s", i, why)
    return "legacy"


def _channel_passes_pool_fds() -> bool:
    """Whether `FdChannel.claim` hands back a descriptor that is not shared memory (a CUDA
    pool's) unmapped, with its ``fd``, instead of failing the batch: `numbeam.tensors._share`
    says so with ``PASSES_DEVICE_FDS = True`` (it does; a stand-in may say otherwise)."""
    from numbeam.tensors import _share

    return bool(getattr(_share, "PASSES_DEVICE_FDS", False))


def _pool_unsupported(i: int) -> str | None:
    """Why device ``i`` cannot have an IPC pool shared by descriptor; None when it can."""
    drv = _driver()
    if drv is None:
        return _drv_error
    dev = _check(drv, drv.cuDeviceGet(i), "cuDeviceGet")
    attr = drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES
    mask = _check(drv, drv.cuDeviceGetAttribute(attr, dev), "cuDeviceGetAttribute")
    fd_bit = int(drv.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
    if not int(mask) & fd_bit:
        return f"its pools support handle types {int(mask):#x}, not POSIX descriptors"
    return None


# ----------------------------------------------------------------------------- pools


class _Pool:
    """This process's IPC pool on one device, and its descriptor (open while the process is)."""

    __slots__ = ("device", "fd", "handle")

    def __init__(self, i: int) -> None:
        drv = _drv
        fd_type = drv.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        props = drv.CUmemPoolProps()
        props.allocType = drv.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        props.handleTypes = fd_type
        loc = drv.CUmemLocation()
        loc.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        loc.id = i
        props.location = loc
        with _context(i):
            self.handle = _check(drv, drv.cuMemPoolCreate(props), "cuMemPoolCreate")
            _check(
                drv,
                drv.cuMemPoolSetAttribute(
                    self.handle,
                    drv.CUmemPool_attribute.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    drv.cuuint64_t(POOL_RELEASE_THRESHOLD),
                ),
                "cuMemPoolSetAttribute(RELEASE_THRESHOLD)",
            )
            fd = _check(
                drv,
                drv.cuMemPoolExportToShareableHandle(self.handle, fd_type, 0),
                "cuMemPoolExportToShareableHandle",
            )
        self.fd = int(fd)
        os.set_inheritable(self.fd, False)  # a subprocess must not hold our pool
        self.device = i

    def __repr__(self) -> str:
        return f"<numbeam CUDA pool on cuda:{self.device}, descriptor {self.fd}>"


def _pool(i: int) -> _Pool:
    pool = _pools.get(i)
    if pool is None:
        with _lock:
            pool = _pools.get(i)
            if pool is None:
                pool = _pools[i] = _Pool(i)
    return pool


class _ImportedPool:
    """Another process's pool, imported here from its descriptor; destroyed when forgotten and
    no buffer imported from it is left (each holds it)."""

    __slots__ = ("__weakref__", "device", "handle", "node")

    def __init__(self, i: int, fd: int, node: str | None) -> None:
        drv = _drv
        fd_type = drv.CUmemAllocationHandleType.CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        with _context(i):
            # (the driver does not take the descriptor: whoever passed it closes it)
            handle = _check(
                drv,
                drv.cuMemPoolImportFromShareableHandle(fd, fd_type, 0),
                "cuMemPoolImportFromShareableHandle",
            )
            try:
                loc = drv.CUmemLocation()
                loc.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
                loc.id = i
                rw = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                flags = _check(drv, drv.cuMemPoolGetAccess(handle, loc), "cuMemPoolGetAccess")
                if flags != rw:
                    desc = drv.CUmemAccessDesc()
                    desc.location = loc
                    desc.flags = rw
                    _check(drv, drv.cuMemPoolSetAccess(handle, [desc], 1), "cuMemPoolSetAccess")
            except BaseException:
                drv.cuMemPoolDestroy(handle)
                raise
        self.handle = handle
        self.device = i
        self.node = node

    def __del__(self) -> None:
        try:
            with _context(self.device):
                _drv.cuMemPoolDestroy(self.handle)
        except Exception:  # the interpreter is exiting, or CUDA is gone with the context
            pass


def _pool_free(device: int, addr: int) -> None:
    """Free a pool allocation, ours or imported: once the device's work is done (``cuMemFree``
    does not wait for it with pool memory), and complete when this returns."""
    cp = _cupy()
    dev = cp.cuda.Device(device)
    with _context(device):
        dev.synchronize()
        _check(_drv, _drv.cuMemFree(addr), "cuMemFree")


# ----------------------------------------------------------------------------- buffers


class CudaBuffer:
    """One device allocation: ours (``own``: ``cudaMalloc``, or our pool's) or another
    process's, opened from its handle. ``device``, ``addr`` (the device pointer), ``size``;
    ``pool`` is the pool it belongs to (ours or imported), None for the legacy path."""

    __slots__ = (
        "__weakref__",
        "addr",
        "credits",
        "device",
        "exported",
        "handle",
        "id",
        "origin",
        "own",
        "pool",
        "size",
    )

    def __init__(
        self,
        device: str,
        addr: int,
        size: int,
        own: bool,
        pool: _Pool | _ImportedPool | None = None,
    ) -> None:
        global _next_id
        self.device = device
        self.addr = addr
        self.size = size
        self.own = own
        self.pool = pool
        self.exported = False
        self.handle: bytes | None = None  # ours: the IPC handle or export data, made once
        self.origin: tuple[str | None, str, int] | None = None  # importer: (node, key, id)
        self.credits = 0  # importer: handles decoded for this buffer
        with _lock:
            _next_id += 1
            self.id = _next_id
            dc = device_counters(device)
            if own:
                dc.buffers += 1
                dc.bytes += size
                _live[self.id] = self
            else:
                dc.imported += 1

    def __del__(self) -> None:
        try:
            if self.pool is not None:
                _pool_free(_index(self.device), self.addr)
            else:
                rt = _cp.cuda.runtime
                with _cp.cuda.Device(_index(self.device)):
                    if self.own:
                        rt.free(self.addr)
                    else:
                        rt.ipcCloseMemHandle(self.addr)
        except Exception:  # the interpreter is exiting, or CUDA is gone with the context
            return
        with _lock:
            dc = device_counters(self.device)
            if self.own:
                dc.buffers -= 1
                dc.bytes -= self.size
                if self.exported:
                    dc.exported -= 1
            else:
                dc.imported -= 1
        if not self.own and self.origin is not None:
            node, key, id_ = self.origin
            sender = _release_sender
            if sender is not None:
                try:
                    sender(node, [key, id_, self.credits])
                except Exception:
                    log.exception("numbeam: releasing a CUDA buffer of %s failed", node)

    def __repr__(self) -> str:
        kind = "own" if self.own else "imported"
        via = "pool" if self.pool is not None else "ipc"
        return f"<CudaBuffer {kind} ({via}) {self.device} {self.size} bytes at {self.addr:#x}>"


# ----------------------------------------------------------------------------- the backend


class _Cuda:
    def alloc(self, device: str, nbytes: int) -> CudaBuffer:
        size = max(nbytes, 1)
        i = _index(device)
        if ipc_path(device) == "pool":
            pool = _pool(i)
            drv = _drv
            with _context(i):
                try:
                    ptr = _check(
                        drv,
                        drv.cuMemAllocFromPoolAsync(size, pool.handle, 0),
                        "cuMemAllocFromPoolAsync",
                    )
                    _check(drv, drv.cuStreamSynchronize(0), "cuStreamSynchronize")
                except CudaDriverError as e:
                    raise MemoryError(f"cannot allocate {size} bytes on {device}: {e}") from None
            return CudaBuffer(device, int(ptr), size, True, pool)
        cp = _cupy()
        with cp.cuda.Device(i):
            try:
                ptr = cp.cuda.runtime.malloc(size)
            except cp.cuda.runtime.CUDARuntimeError as e:
                raise MemoryError(f"cannot allocate {size} bytes on {device}: {e}") from None
        return CudaBuffer(device, ptr, size, True)

    def from_host(self, device: str, src: np.ndarray) -> CudaBuffer:
        src = np.ascontiguousarray(src)
        buf = self.alloc(device, src.nbytes)
        if src.nbytes:
            cp = _cupy()
            rt = cp.cuda.runtime
            with cp.cuda.Device(_index(device)):
                rt.memcpy(buf.addr, src.ctypes.data, src.nbytes, rt.memcpyHostToDevice)
        return buf

    def to_host(self, buf: CudaBuffer, off: int, out: np.ndarray) -> None:
        if not out.flags.c_contiguous:
            raise ValueError("to_host needs a C-contiguous array")
        if out.nbytes:
            cp = _cupy()
            rt = cp.cuda.runtime
            with cp.cuda.Device(_index(buf.device)):
                rt.memcpy(out.ctypes.data, buf.addr + off, out.nbytes, rt.memcpyDeviceToHost)

    def copy(self, buf: CudaBuffer, off: int, nbytes: int, device: str) -> CudaBuffer:
        cp = _cupy()
        rt = cp.cuda.runtime
        dst = self.alloc(device, nbytes)
        if not nbytes:
            return dst
        src_i, dst_i = _index(buf.device), _index(device)
        dev = cp.cuda.Device(dst_i)
        with dev:
            if src_i == dst_i:
                rt.memcpy(dst.addr, buf.addr + off, nbytes, rt.memcpyDeviceToDevice)
            else:
                _enable_peer(dst_i, src_i)
                rt.memcpyPeer(dst.addr, dst_i, buf.addr + off, src_i, nbytes)
            dev.synchronize()  # both are asynchronous for device memory
        return dst

    def array(
        self, buf: CudaBuffer, off: int, shape: tuple[int, ...], dt: Any, readonly: bool
    ) -> Any:
        """A ``cupy.ndarray`` over the bytes (bf16, which CuPy lacks, as uint16 of the same
        bits). Read-only by contract only: CuPy arrays have no such flag."""
        cp = _cupy()
        if dt == _BF16:
            dt = np.dtype(np.uint16)
        mem = cp.cuda.UnownedMemory(buf.addr, buf.size, buf, device_id=_index(buf.device))
        return cp.ndarray(shape, dtype=dt, memptr=cp.cuda.MemoryPointer(mem, off))

    def synchronize(self, buf: CudaBuffer) -> None:
        """Wait for the work queued on the buffer's device (a Builder's fill) to finish."""
        cp = _cupy()
        dev = cp.cuda.Device(_index(buf.device))
        with dev:
            dev.synchronize()

    def from_dlpack(self, device: str, x: Any) -> tuple[CudaBuffer, tuple[int, ...], Any]:
        """A copy, in a buffer of ours, of CUDA memory that ``x`` exports by DLPack."""
        cp = _cupy()
        dev = cp.cuda.Device(_index(device))
        with dev:
            a = cp.ascontiguousarray(cp.from_dlpack(x))
            _, dt = resolve_dtype(a.dtype)
            buf = self.alloc(device, a.nbytes)
            if a.nbytes:
                rt = cp.cuda.runtime
                rt.memcpy(buf.addr, a.data.ptr, a.nbytes, rt.memcpyDeviceToDevice)
            dev.synchronize()
        return buf, tuple(a.shape), dt

    # -- handles -------------------------------------------------------------------------------

    def export(
        self,
        buf: CudaBuffer,
        peer: str | None,
        add_fd: Callable[[int, Any], int | None] | None = None,
    ) -> list[Any] | None:
        """A handle for another process on the host, pinning ``buf`` for node ``peer``; None
        for a buffer that is not ours (it is then staged through host bytes), and for a pool
        buffer when ``add_fd`` is not given or has no room. ``add_fd(fd, keep)`` adds a
        descriptor to those passed ahead of the batch (``keep`` keeps it open until then) and
        returns its index there, or None."""
        if not buf.own:
            return None
        pool = buf.pool
        if pool is not None:
            if add_fd is None:
                return None
            assert isinstance(pool, _Pool)
            index = add_fd(pool.fd, pool)
            if index is None:
                return None
            if buf.handle is None:
                i = _index(buf.device)
                cp = _cupy()
                with _context(i):
                    cp.cuda.Device(i).synchronize()  # the importer must see the bytes so far
                    data = _check(
                        _drv, _drv.cuMemPoolExportPointer(buf.addr), "cuMemPoolExportPointer"
                    )
                buf.handle = bytes(data.reserved)
            handle: list[Any] = ["pool", index, buf.handle, _KEY, buf.id, buf.size]
        else:
            if buf.handle is None:
                cp = _cupy()
                dev = cp.cuda.Device(_index(buf.device))
                with dev:
                    dev.synchronize()  # the importer must see the bytes written so far
                    buf.handle = bytes(cp.cuda.runtime.ipcGetMemHandle(buf.addr))
            handle = ["ipc", buf.handle, _KEY, buf.id, buf.size]
        with _lock:
            entry = _pins.get(buf.id)
            if entry is None:
                entry = _pins[buf.id] = (buf, {})
            entry[1][peer] = entry[1].get(peer, 0) + 1
            if not buf.exported:
                buf.exported = True
                device_counters(buf.device).exported += 1
        return handle

    def import_handle(
        self,
        device: str,
        handle: Any,
        need: int,
        peer: str | None,
        fd_at: Callable[[int], int] | None = None,
    ) -> CudaBuffer:
        """The buffer a handle from node ``peer`` names, opened here (once per process); it
        must hold ``need`` bytes. ``fd_at(index)`` is the descriptor at ``index`` of those
        passed ahead of the batch (a pool handle names its pool's so), raising ValueError when
        there is none. TypeError or ValueError for a malformed handle."""
        if type(handle) is not list or not handle:
            raise ValueError("a CUDA handle is not a non-empty list")
        kind = handle[0]
        if kind == "ipc":
            if len(handle) != 5:
                raise ValueError("a CUDA IPC handle has not 5 fields")
            _, raw, key, id_, size = handle
            index = None
        elif kind == "pool":
            if len(handle) != 6:
                raise ValueError("a CUDA pool handle has not 6 fields")
            _, index, raw, key, id_, size = handle
            if type(index) is not int or index < 0:
                raise ValueError("a CUDA pool handle's descriptor index is not an int >= 0")
        else:
            raise ValueError(f"a CUDA handle of unknown kind {kind!r}")
        if type(raw) is not bytes or len(raw) != _HANDLE_BYTES:
            raise ValueError(f"a CUDA {kind} handle's data is not 64 bytes")
        if type(key) is not str or type(id_) is not int or type(size) is not int:
            raise ValueError("a CUDA handle's owner, id or size has the wrong type")
        if not 0 < size or need > size:
            raise ValueError(f"the handle's {size} bytes cannot hold {need}")
        if key == _KEY:  # our own buffer, sent to ourselves
            buf = _live.get(id_)
            if buf is None or buf.device != device or (buf.pool is not None) != (kind == "pool"):
                raise ValueError("a handle to a buffer of this process that is gone")
            release(peer, [key, id_, 1])  # no other process holds it for this handle
            return buf
        with _lock:
            buf = _opened.get((key, id_))
            if buf is None:
                if index is None:
                    buf = _open_ipc(device, raw, size)
                else:
                    buf = _import_pool_ptr(device, raw, size, key, index, peer, fd_at)
                buf.origin = (peer, key, id_)
                _opened[(key, id_)] = buf
            elif (
                buf.device != device
                or buf.size != size
                or (buf.pool is not None) != (kind == "pool")
            ):
                raise ValueError("a handle disagrees with the one opened before")
            buf.credits += 1
        return buf


def _open_ipc(device: str, raw: bytes, size: int) -> CudaBuffer:
    cp = _cupy()
    rt = cp.cuda.runtime
    with cp.cuda.Device(_index(device)):
        try:
            ptr = rt.ipcOpenMemHandle(raw)  # (flags: lazy peer access)
        except rt.CUDARuntimeError as e:
            raise ValueError(f"cudaIpcOpenMemHandle failed: {e}") from None
    return CudaBuffer(device, ptr, size, False)


def _import_pool_ptr(
    device: str,
    raw: bytes,
    size: int,
    key: str,
    index: int,
    peer: str | None,
    fd_at: Callable[[int], int] | None,
) -> CudaBuffer:
    """Another process's pool allocation, imported here (its pool too, the first time)."""
    drv = _driver()
    if drv is None:
        raise ValueError(f"a CUDA pool handle, which needs cuda.bindings: {_drv_error}")
    i = _index(device)
    pool = _imported_pools.get((key, i))
    if pool is None:
        if fd_at is None:
            raise ValueError("a CUDA pool handle without the descriptors of its batch")
        fd = fd_at(index)
        if type(fd) is not int:
            raise ValueError(f"a CUDA pool handle names descriptor {index!r}, which is not one")
        try:
            pool = _ImportedPool(i, fd, peer)
        except CudaDriverError as e:
            raise ValueError(str(e)) from None
        _imported_pools[(key, i)] = pool
    data = drv.CUmemPoolPtrExportData()
    data.reserved = raw
    with _context(i):
        try:
            ptr = _check(
                drv, drv.cuMemPoolImportPointer(pool.handle, data), "cuMemPoolImportPointer"
            )
        except CudaDriverError as e:
            raise ValueError(str(e)) from None
    return CudaBuffer(device, int(ptr), size, False, pool)


def _enable_peer(dst: int, src: int) -> None:
    """Let device ``dst`` access ``src``'s memory where the hardware can (once per pair)."""
    if (dst, src) in _peer_enabled:
        return
    rt = _cupy().cuda.runtime
    _peer_enabled.add((dst, src))
    if rt.deviceCanAccessPeer(dst, src):
        try:
            rt.deviceEnablePeerAccess(src)  # (for the current device, dst)
        except rt.CUDARuntimeError as e:  # enabled already by someone else
            log.debug("devices: peer access %d -> %d: %s", dst, src, e)


BACKEND = _Cuda()


# ----------------------------------------------------------------------------- the ledger


def set_release_sender(fn: Callable[[str | None, list[Any]], None] | None) -> None:
    """Install how an importer tells an owner it released a buffer: ``fn(owner_node,
    payload)`` must deliver ``payload`` (msgpack-able) to ``release(from_node, payload)`` in
    the node ``owner_node``. Called from a buffer's finalizer: it must not block."""
    global _release_sender
    _release_sender = fn


def release(node: str | None, payload: Any) -> None:
    """Owner side: node ``node`` released ``[owner, id, count]`` handles it decoded. Bad or
    stale payloads are ignored (they come from peers)."""
    if type(payload) is not list or len(payload) != 3:
        return
    key, id_, count = payload
    if key != _KEY or type(id_) is not int or type(count) is not int or count <= 0:
        return
    with _lock:
        entry = _pins.get(id_)
        if entry is None:
            return
        peers = entry[1]
        # (pins made without a peer name are released by whoever sends)
        for who in (node, None):
            held = peers.get(who, 0)
            take = min(held, count)
            if take:
                count -= take
                if held == take:
                    del peers[who]
                else:
                    peers[who] = held - take
        if not peers:
            del _pins[id_]  # the buffer goes when nothing else holds it


def forget_node(node: str) -> None:
    """Node ``node`` is down. Owner side: what it imported needs no keeping any more.
    Importer side: the pools imported from it are no longer cached."""
    with _lock:
        for id_ in list(_pins):
            peers = _pins[id_][1]
            if peers.pop(node, None) is not None and not peers:
                del _pins[id_]
        # Importer side: its pools go once no buffer imported from them is left.
        for k in [k for k, p in _imported_pools.items() if p.node == node]:
            del _imported_pools[k]


def ledger() -> dict[int, dict[str | None, int]]:
    """Owner side, for tests and introspection: buffer id -> {node: handles not released}."""
    with _lock:
        return {id_: dict(peers) for id_, (_, peers) in _pins.items()}
