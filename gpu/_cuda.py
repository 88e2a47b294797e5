"""Every CUDA call numbeam makes, through CuPy, behind the `numbeam.gpu._backend` interface.

Imported only when a ``cuda:*`` device is used; CuPy itself is imported on the first call.

**Memory.** Each tensor buffer is a ``cudaMalloc`` of its own (`CudaBuffer`, never a
sub-allocation of CuPy's pool: an IPC handle names a whole allocation), freed when the last
tensor, array or importer holding it is gone. ``array()`` is a ``cupy.ndarray`` over it
(``UnownedMemory`` whose owner is the buffer, so the array keeps it alive). Host copies are
``cudaMemcpy``; device to device on one GPU a ``cudaMemcpy``, across GPUs ``cudaMemcpyPeer``
after ``cudaDeviceEnablePeerAccess`` where ``cudaDeviceCanAccessPeer`` allows (else the driver
stages it). Every copy is complete when the call returns.

**Handles to other processes (legacy CUDA IPC).** `export` gives ``["ipc", handle, owner,
id, size]``: the 64-byte ``cudaIpcGetMemHandle`` of the buffer, this process's random key,
the buffer's id and its size. `import_handle` opens it with ``cudaIpcOpenMemHandle`` (lazy
peer access), once per process: a second handle to the same buffer reuses the opened pointer;
``cudaIpcCloseMemHandle`` when the last holder here is gone.

Nothing in the kernel counts legacy IPC importers, and freeing memory an importer still maps is
undefined behaviour, so the owner keeps a **ledger**: each export pins the buffer for the node
it goes to (`Encoder.peer`, None when the node does not say). An importer counts the handles it
decoded for each buffer; when it closes the buffer it calls the *release sender* (installed by
the distribution layer with `set_release_sender`) with the owner's node (`Decoder.peer`) and
``[owner, id, count]``; the owner's node passes that to `release`, which unpins ``count``. A
node that goes down is forgotten with `forget_node`: its pins go. A buffer is freed when it is
neither referenced nor pinned. Bounds: pins of a node the layer does not name (``peer`` None),
or whose release never arrives, last until that node is forgotten or this process exits.

A handle decoded in the process that made it (tests, or a node sending to itself) is the
buffer itself, not opened. A handle of an imported buffer is never re-exported (its owner could
not account for the third process): such tensors cross as staged host bytes.

(Not done: the stream-ordered pool path, ``cuMemPoolCreate`` with
``CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`` and ``cuMemPoolExportPointer``; it needs the same
ledger, since an importer must free an imported pointer before its owner does.)
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from numbeam.tensors._dtypes import DTYPES, resolve_dtype
from numbeam.tensors._memory import device_counters

__all__ = [
    "BACKEND",
    "CudaBuffer",
    "forget_node",
    "ledger",
    "release",
    "set_release_sender",
]

log = logging.getLogger("numbeam")

_HANDLE_BYTES = 64  # sizeof(cudaIpcMemHandle_t)
_KEY = os.urandom(8).hex()  # this process, as an owner of buffers
_BF16 = DTYPES["bf16"]

_lock = threading.RLock()
_cp: Any = None
_next_id = 0
_live: weakref.WeakValueDictionary[int, CudaBuffer] = weakref.WeakValueDictionary()
# Owner side: buffer id -> (buffer, {importing node: handles sent}).
_pins: dict[int, tuple[CudaBuffer, dict[str | None, int]]] = {}
# Importer side: (owner key, buffer id) -> the buffer opened here.
_opened: weakref.WeakValueDictionary[tuple[str, int], CudaBuffer] = weakref.WeakValueDictionary()
_peer_enabled: set[tuple[int, int]] = set()
_release_sender: Callable[[str | None, list[Any]], None] | None = None


def _cupy() -> Any:
    global _cp
    if _cp is None:
        import cupy  # type: ignore[import-not-found]

        _cp = cupy
    return _cp


def _index(device: str) -> int:
    return int(device[5:])


class CudaBuffer:
    """One device allocation: ours (``own``, from ``cudaMalloc``) or another process's, opened
    from its IPC handle. ``device``, ``addr`` (the device pointer), ``size``."""

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
        "size",
    )

    def __init__(self, device: str, addr: int, size: int, own: bool) -> None:
        global _next_id
        self.device = device
        self.addr = addr
        self.size = size
        self.own = own
        self.exported = False
        self.handle: bytes | None = None  # our IPC handle, made on the first export
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
        return f"<CudaBuffer {kind} {self.device} {self.size} bytes at {self.addr:#x}>"


# ----------------------------------------------------------------------------- the backend


class _Cuda:
    def alloc(self, device: str, nbytes: int) -> CudaBuffer:
        cp = _cupy()
        size = max(nbytes, 1)
        with cp.cuda.Device(_index(device)):
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

    def export(self, buf: CudaBuffer, peer: str | None) -> list[Any] | None:
        """A handle for another process on the host, pinning ``buf`` for node ``peer``; None
        for a buffer that is not ours (it is then staged through host bytes)."""
        if not buf.own:
            return None
        if buf.handle is None:
            cp = _cupy()
            dev = cp.cuda.Device(_index(buf.device))
            with dev:
                dev.synchronize()  # the importer must see the bytes written so far
                buf.handle = bytes(cp.cuda.runtime.ipcGetMemHandle(buf.addr))
        with _lock:
            entry = _pins.get(buf.id)
            if entry is None:
                entry = _pins[buf.id] = (buf, {})
            entry[1][peer] = entry[1].get(peer, 0) + 1
            if not buf.exported:
                buf.exported = True
                device_counters(buf.device).exported += 1
        return ["ipc", buf.handle, _KEY, buf.id, buf.size]

    def import_handle(self, device: str, handle: Any, need: int, peer: str | None) -> CudaBuffer:
        """The buffer a handle from node ``peer`` names, opened here (once per process); it
        must hold ``need`` bytes. TypeError or ValueError for a malformed handle."""
        if type(handle) is not list or len(handle) != 5 or handle[0] != "ipc":
            raise ValueError("not a CUDA IPC handle")
        _, raw, key, id_, size = handle
        if type(raw) is not bytes or len(raw) != _HANDLE_BYTES:
            raise ValueError("an IPC memory handle is not 64 bytes")
        if type(key) is not str or type(id_) is not int or type(size) is not int:
            raise ValueError("a CUDA handle's owner, id or size has the wrong type")
        if not 0 < size or need > size:
            raise ValueError(f"the handle's {size} bytes cannot hold {need}")
        if key == _KEY:  # our own buffer, sent to ourselves
            buf = _live.get(id_)
            if buf is None or buf.device != device:
                raise ValueError("a handle to a buffer of this process that is gone")
            release(peer, [key, id_, 1])  # no other process holds it for this handle
            return buf
        with _lock:
            buf = _opened.get((key, id_))
            if buf is None:
                cp = _cupy()
                rt = cp.cuda.runtime
                with cp.cuda.Device(_index(device)):
                    try:
                        ptr = rt.ipcOpenMemHandle(raw)  # (flags: lazy peer access)
                    except rt.CUDARuntimeError as e:
                        raise ValueError(f"cudaIpcOpenMemHandle failed: {e}") from None
                buf = CudaBuffer(device, ptr, size, False)
                buf.origin = (peer, key, id_)
                _opened[(key, id_)] = buf
            elif buf.device != device or buf.size != size:
                raise ValueError("a handle disagrees with the one opened before")
            buf.credits += 1
        return buf


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
    """Owner side: node ``node`` is down; what it imported needs no keeping any more."""
    with _lock:
        for id_ in list(_pins):
            peers = _pins[id_][1]
            if peers.pop(node, None) is not None and not peers:
                del _pins[id_]


def ledger() -> dict[int, dict[str | None, int]]:
    """Owner side, for tests and introspection: buffer id -> {node: handles not released}."""
    with _lock:
        return {id_: dict(peers) for id_, (_, peers) in _pins.items()}
