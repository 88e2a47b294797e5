"""Device memory behind one interface: the fake devices here, CUDA in `numbeam.gpu._cuda`.

`backend(device)` returns the module-like object for a device's kind; tensors (see
`numbeam.tensors._tensor`) and the wire (`numbeam.transport._wire`) call only these
operations, so a fake device runs the same paths as a GPU::

    alloc(device, nbytes) -> buffer          fresh memory; buffer.device, .addr, .size
    from_host(device, src) -> buffer         a new buffer holding the bytes of numpy ``src``
    to_host(buf, off, out)                   copy ``out.nbytes`` bytes at ``off`` into numpy ``out``
    copy(buf, off, nbytes, device) -> buffer a new buffer on ``device`` (same kind) with them
    array(buf, off, shape, dt, readonly)     the device's own array over the bytes, no copy
    synchronize(buf)                         wait until work queued on the buffer is done

CUDA adds ``from_dlpack``, ``export(buf, peer, add_fd)`` and ``import_handle(device, handle,
need, peer, fd_at)`` (see `numbeam.gpu._cuda`): a buffer of a CUDA memory pool crosses with its
pool's descriptor, which ``add_fd`` puts among the batch's and ``fd_at`` finds there.

A fake device's buffer is a `Segment` of its own (unnamed shared memory, see
`numbeam.tensors._memory`), host memory, so its array is numpy and its handles between nodes
are file descriptors, exactly as for ``cpu`` tensors. Exporting and importing handles differ
in kind (a segment's descriptor here; a pool's descriptor plus the buffer's export data, or a
legacy CUDA IPC handle, there) and live in the wire and `_cuda`.

Nothing here imports CuPy: `_cuda` is imported the first time a ``cuda:*`` device is used.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numbeam.tensors._memory import Segment, alloc_device_segment

__all__ = ["FAKE", "Backend", "backend"]


class Backend(Protocol):
    def alloc(self, device: str, nbytes: int) -> Any: ...

    def from_host(self, device: str, src: np.ndarray) -> Any: ...

    def to_host(self, buf: Any, off: int, out: np.ndarray) -> None: ...

    def copy(self, buf: Any, off: int, nbytes: int, device: str) -> Any: ...

    def array(self, buf: Any, off: int, shape: tuple[int, ...], dt: Any, readonly: bool) -> Any: ...

    def synchronize(self, buf: Any) -> None: ...


def _bytes_of(a: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a C-contiguous array (bf16 and friends included)."""
    return a.reshape(-1).view(np.uint8)


class _Fake:
    """Fake devices: one shared-memory segment per buffer, tagged with its device."""

    def alloc(self, device: str, nbytes: int) -> Segment:
        return alloc_device_segment(device, nbytes)

    def from_host(self, device: str, src: np.ndarray) -> Segment:
        seg = alloc_device_segment(device, src.nbytes)
        if src.nbytes:
            np.frombuffer(seg.mm, np.uint8, src.nbytes)[:] = _bytes_of(src)
        return seg

    def to_host(self, buf: Segment, off: int, out: np.ndarray) -> None:
        n = out.nbytes
        if n:
            _bytes_of(out)[:] = np.frombuffer(buf.mm, np.uint8, n, off)

    def copy(self, buf: Segment, off: int, nbytes: int, device: str) -> Segment:
        seg = alloc_device_segment(device, nbytes)
        if nbytes:
            np.frombuffer(seg.mm, np.uint8, nbytes)[:] = np.frombuffer(
                buf.mm, np.uint8, nbytes, off
            )
        return seg

    def array(
        self, buf: Segment, off: int, shape: tuple[int, ...], dt: Any, readonly: bool
    ) -> np.ndarray:
        count = 1
        for n in shape:
            count *= n
        a = np.frombuffer(buf.mm, dt, count, off).reshape(shape)  # its base keeps buf mapped
        if readonly:
            a.flags.writeable = False
        return a

    def synchronize(self, buf: Segment) -> None:
        pass  # host memory: written when the writes return


FAKE = _Fake()


def backend(device: str) -> Any:
    """The backend of a (checked) device name other than ``cpu``."""
    if device.startswith("fake:"):
        return FAKE
    from numbeam.gpu import _cuda  # only now: the plain install never imports CuPy

    return _cuda.BACKEND
