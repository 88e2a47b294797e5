"""Shared memory for tensor bytes: segments, an arena for small buffers, a budget, statistics.

A *segment* is an unnamed tmpfs file (``O_TMPFILE`` in ``/dev/shm``, or ``memfd_create`` where
that is missing) mapped with ``MAP_SHARED``. It never has a name, so nothing can be left behind
in ``/dev/shm``: the kernel frees the pages when the last file descriptor and the last mapping
of it are gone, in whatever process, however that process ended. That is the cross-process
reference count: a node that sends a tensor to another node on the host passes the segment's
file descriptor (see `numbeam.tensors._share`), and the receiver maps it. No ledger has to be
repaired after a SIGKILL, and no resource tracker is involved.

Pages are reserved with ``posix_fallocate`` when a segment is made, so a full ``/dev/shm`` (or
the node's budget) raises `MemoryError` at allocation instead of SIGBUS at the first write.

Buffers up to `ARENA_MAX` bytes come from an arena: per power-of-two size class, *chunks*
(segments of up to 4 MiB) cut into equal blocks (see `Chunk`). Allocating a block is one
``list.pop``, atomic under the GIL, so tensors may be made from any thread; freeing one is
CPython dropping a reference. A block whose tensor was sent to another process may still be
read there, so it is never reused; its chunk's memory is given back when no block of the chunk
is in use. Larger buffers get a segment each.

A *fake device*'s memory (``fake:N``, see `numbeam.gpu._devices`) is made the same way but kept
apart: `alloc_device_segment` gives each buffer a segment of its own tagged with its device
(`Segment.device`), outside the arena, the budget and ``cpu``'s counters, so a freed fake
buffer goes straight back to the system. Per-device counters (`device_counters`) are shared
with the CUDA module, and `stats` reports them under ``devices``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
import threading
import weakref
from typing import Any

import numpy as np

__all__ = [
    "ARENA_MAX",
    "Chunk",
    "Segment",
    "alloc_block",
    "alloc_device_segment",
    "alloc_segment",
    "configure",
    "device_counters",
    "map_segment",
    "settings",
    "stats",
]

#: The largest buffer taken from the arena; bigger ones get a segment of their own.
ARENA_MAX = 256 * 1024
_MIN_CLASS_SHIFT = 6  # the smallest block: 64 bytes
_N_CLASSES = ARENA_MAX.bit_length() - _MIN_CLASS_SHIFT  # 64 B .. 256 KiB
_FIRST_CHUNK = 256 * 1024
_CHUNK = 4 * 1024 * 1024
_MIN_BLOCKS = 16
_SHM_DIR = "/dev/shm"
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

_lock = threading.RLock()


class _Settings:
    __slots__ = ("budget", "threshold")

    def __init__(self) -> None:
        self.threshold = 64
        self.budget: int | None = None


settings = _Settings()


class _Counters:
    """What this process has allocated (own) and mapped from others (mapped); under `_lock`."""

    __slots__ = ("mapped", "mapped_bytes", "own_segments", "reserved")

    def __init__(self) -> None:
        self.reserved = 0  # bytes of shared memory this process allocated and still holds
        self.own_segments = 0  # segments this process allocated for single tensors
        self.mapped = 0  # segments of other processes mapped here
        self.mapped_bytes = 0


_counters = _Counters()


class DeviceCounters:
    """One device's memory in this process; updated under `_lock` (fake segments here, CUDA
    buffers in `numbeam.gpu._cuda`).

    ``buffers``/``bytes``: buffers allocated here and alive; ``exported``: those of them sent
    to another process as a handle; ``imported``: buffers of other processes mapped here.
    """

    __slots__ = ("buffers", "bytes", "exported", "imported")

    def __init__(self) -> None:
        self.buffers = 0
        self.bytes = 0
        self.exported = 0
        self.imported = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "buffers": self.buffers,
            "bytes": self.bytes,
            "exported": self.exported,
            "imported": self.imported,
        }


_devices: dict[str, DeviceCounters] = {}


def device_counters(device: str) -> DeviceCounters:
    """The counters of ``device`` (made on first use; a device once seen stays listed)."""
    c = _devices.get(device)
    if c is None:
        with _lock:
            c = _devices.setdefault(device, DeviceCounters())
    return c


# Every segment this process holds, by (st_dev, st_ino): a handle for one that is already
# mapped here (ours, or received before) reuses the mapping.
_by_inode: weakref.WeakValueDictionary[tuple[int, int], Segment] = weakref.WeakValueDictionary()


def configure(*, threshold: int | None = None, budget: int | bool | None = False) -> None:
    """Set the inline threshold and the budget (None: no budget; False: leave it as it is)."""
    if threshold is not None:
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
            raise ValueError(f"tensor_threshold must be an int >= 0, got {threshold!r}")
        settings.threshold = threshold
    if budget is not False:
        if budget is not None and (
            not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0
        ):
            raise ValueError(f"tensor_budget must be a number of bytes > 0 or None, got {budget!r}")
        settings.budget = budget  # type: ignore[assignment]


# ----------------------------------------------------------------------------- segments


def _new_file(size: int) -> int:
    """An unnamed shared-memory file of ``size`` bytes, its pages reserved."""
    try:
        fd = os.open(_SHM_DIR, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        fd = os.memfd_create("numbeam", os.MFD_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG, errno.EDQUOT):
            raise MemoryError(
                f"cannot reserve {size} bytes of shared memory ({_SHM_DIR} is full?): "
                f"{os.strerror(e.errno)}"
            ) from None
        raise
    return fd


def _address(mm: mmap.mmap) -> int:
    return int(np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0])


class Segment:
    """One mapping of a shared-memory file; unmapped and closed when the last user drops it.

    ``own`` segments were allocated here (mapped read-write); others were received from
    another process and are mapped read-only. The file descriptor stays open while the
    segment is mapped, so a tensor in it can be passed on to a third process. ``device`` is
    ``"cpu"``, or the fake device whose memory this is; ``exported`` is set when one of our
    own device segments was sent to another process as a handle.
    """

    __slots__ = ("__weakref__", "addr", "device", "exported", "fd", "key", "mm", "own", "size")

    def __init__(self, fd: int, size: int, own: bool, device: str = "cpu") -> None:
        """Map ``fd`` and own it from then on; if this raises, ``fd`` is the caller's still."""
        prot = mmap.PROT_READ | mmap.PROT_WRITE if own else mmap.PROT_READ
        # Our own pages are about to be written: map them all now, in one call, rather than
        # fault them in one by one. A received segment is mapped lazily (a hand-off is O(1)).
        flags = mmap.MAP_SHARED | (_MAP_POPULATE if own else 0)
        mm = mmap.mmap(fd, size, flags, prot)
        addr = _address(mm)
        st = os.fstat(fd)
        # Nothing can fail from here: __del__ closes `fd` once it is set.
        self.mm = mm
        self.addr = addr
        self.key = (st.st_dev, st.st_ino)
        self.size = size
        self.own = own
        self.device = device
        self.exported = False
        self.fd = fd
        with _lock:
            if device != "cpu":
                dc = device_counters(device)
                if own:
                    dc.buffers += 1
                    dc.bytes += size
                else:
                    dc.imported += 1
            elif own:
                _counters.reserved += size
            else:
                _counters.mapped += 1
                _counters.mapped_bytes += size
        _by_inode[self.key] = self

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError, TypeError):  # closed, or the interpreter is exiting
            return
        with _lock:
            if self.device != "cpu":
                dc = _devices[self.device]
                if self.own:
                    dc.buffers -= 1
                    dc.bytes -= self.size
                    if self.exported:
                        dc.exported -= 1
                else:
                    dc.imported -= 1
            elif self.own:
                _counters.reserved -= self.size
            else:
                _counters.mapped -= 1
                _counters.mapped_bytes -= self.size
        # The mmap object unmaps when it is freed, right after this.

    def mark_exported(self) -> None:
        """One of our device segments is about to cross to another process as a handle."""
        if not self.exported and self.own and self.device != "cpu":
            with _lock:
                if not self.exported:
                    self.exported = True
                    _devices[self.device].exported += 1

    def adopt_device(self, device: str) -> bool:
        """A received segment that a handle names as memory of ``device``: label it so (once,
        moving it from ``cpu``'s counters to the device's); False if it is labelled otherwise
        already, or is one of ours on another device."""
        if self.device == device:
            return True
        if self.own or self.device != "cpu":
            return False
        with _lock:
            if self.device != "cpu":
                return self.device == device
            _counters.mapped -= 1
            _counters.mapped_bytes -= self.size
            device_counters(device).imported += 1
            self.device = device
        return True

    def __repr__(self) -> str:
        kind = "own" if self.own else "mapped"
        where = "" if self.device == "cpu" else f" {self.device}"
        return f"<Segment {kind}{where} {self.size} bytes inode {self.key[1]}>"


def _own_segment(size: int) -> Segment:
    """A new read-write segment of ``size`` bytes, within the budget."""
    fd = _reserve(size)
    try:
        return Segment(fd, size, True)
    except BaseException:
        os.close(fd)
        raise


def _reserve(size: int) -> int:
    """A new file of ``size`` bytes, within the budget."""
    budget = settings.budget
    if budget is not None and _counters.reserved + size > budget:
        _sweep()
        if _counters.reserved + size > budget:
            raise MemoryError(
                f"tensor memory budget exhausted: {size} bytes requested, "
                f"{_counters.reserved} of {budget} in use (node option tensor_budget)"
            )
    return _new_file(size)


def alloc_segment(size: int) -> Segment:
    """A read-write segment of its own for one large buffer."""
    seg = _own_segment(size)
    with _lock:
        _counters.own_segments += 1
    weakref.finalize(seg, _own_segment_gone)
    return seg


def _own_segment_gone() -> None:
    with _lock:
        _counters.own_segments -= 1


def alloc_device_segment(device: str, size: int) -> Segment:
    """A read-write segment of its own for one buffer of fake device ``device`` (a name checked
    by the caller), outside ``cpu``'s arena, budget and counters. A segment holds at least one
    byte (an empty file cannot be mapped); freeing it gives its pages back to the system."""
    size = max(size, 1)
    fd = _new_file(size)
    try:
        return Segment(fd, size, True, device)
    except BaseException:
        os.close(fd)
        raise


def map_segment(fd: int) -> Segment:
    """The segment a received file descriptor refers to; takes ownership of ``fd``.

    If that file is mapped here already (one of ours, or received before), ``fd`` is closed
    and the existing mapping is returned.
    """
    try:
        st = os.fstat(fd)
        seg = _by_inode.get((st.st_dev, st.st_ino))
        if seg is not None:
            os.close(fd)
            return seg
        if st.st_size <= 0:
            raise ValueError("an empty shared-memory file")
        return Segment(fd, st.st_size, False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


# ----------------------------------------------------------------------------- the arena


def _refcounts(tokens: list[tuple[int]]) -> list[int]:
    return [sys.getrefcount(t) for t in tokens]


# A token's count when only its chunk's list holds it (measured, so it holds on any CPython).
_FREE_COUNT = _refcounts([(i,) for i in range(1)])[0]


class Chunk:
    """A segment cut into ``n`` blocks of ``bsize`` bytes, each owned through a *token*.

    A token is a 1-tuple ``(index,)``; a tensor in the block holds it, and so, through the
    tensor, does every numpy view of it. A block is free when nothing but the chunk's
    ``tokens`` list refers to its token: CPython's own reference count tells, so dropping a
    tensor runs no Python code. ``free`` holds tokens ready to hand out (``list.pop`` is
    atomic: any thread may allocate); when it runs dry, a scan of the counts refills it.
    ``shipped`` holds the indices whose tensors were sent to another process: their blocks
    are never handed out again, as the other process may still read them.
    """

    __slots__ = ("bsize", "cls", "free", "n", "seg", "shipped", "slabs", "tokens")

    def __init__(self, cls: _SizeClass, size: int) -> None:
        self.cls = cls
        self.bsize = cls.bsize
        self.n = size // cls.bsize
        self.seg = _own_segment(size)
        self.tokens = [(i,) for i in range(self.n)]
        self.free = self.tokens[::-1]
        self.shipped: set[int] = set()
        # Writable views, one row per block, per dtype (by scalar type: a dtype hashes slowly):
        # copying into a block is one slice assignment.
        self.slabs: dict[type, np.ndarray] = {}

    def slab(self, dt: np.dtype[Any]) -> np.ndarray:
        s = self.slabs.get(dt.type)
        if s is None:
            s = np.frombuffer(self.seg.mm, np.uint8).reshape(self.n, self.bsize)
            if dt != np.uint8:
                s = s.view(dt)
            self.slabs[dt.type] = s
        return s

    def scan(self) -> tuple[list[tuple[int]], int]:
        """(tokens of blocks free to reuse, number of blocks in use)."""
        counts = _refcounts(self.tokens)
        shipped = self.shipped
        queued = len(self.free)  # in the free list: one reference more, and free
        reusable = [t for t, c in zip(self.tokens, counts, strict=True) if c == _FREE_COUNT]
        unused = len(reusable) + queued
        if shipped:
            reusable = [t for t in reusable if t[0] not in shipped]
        return reusable, self.n - unused


class _SizeClass:
    __slots__ = ("bsize", "chunks", "current", "turn")

    def __init__(self, bsize: int) -> None:
        self.bsize = bsize
        self.chunks: list[Chunk] = []
        self.current: Chunk | None = None
        self.turn = 0  # the chunk a refill looks at next, round the list


_classes = [_SizeClass(1 << (i + _MIN_CLASS_SHIFT)) for i in range(_N_CLASSES)]
# Size class by (nbytes - 1).bit_length(), for nbytes of 1 .. ARENA_MAX.
_BY_BITS = [_classes[max(0, b - _MIN_CLASS_SHIFT)] for b in range(ARENA_MAX.bit_length())]


def class_of(nbytes: int) -> _SizeClass:
    """The size class for a buffer of ``nbytes`` (1 .. ARENA_MAX)."""
    return _BY_BITS[(nbytes - 1).bit_length()]


def alloc_block(cls: _SizeClass) -> tuple[Chunk, tuple[int]]:
    """A free block of ``cls``: its chunk and token (hold the token while the block is used)."""
    c = cls.current
    if c is not None:
        try:
            return c, c.free.pop()
        except IndexError:
            pass
    with _lock:
        return _refill(cls)


def _refill(cls: _SizeClass) -> tuple[Chunk, tuple[int]]:
    # Look at the current chunk and the next two in turn: reuse one if a quarter of it is
    # free, so scans cost O(1) a block; give back those nothing uses; else make a new chunk.
    # A sample of counts first spares the scan of a chunk that is mostly in use.
    chunks = cls.chunks
    current = cls.current
    look = [current] if current is not None else []
    if chunks:
        for _ in range(2):
            cls.turn = (cls.turn + 1) % len(chunks)
            c = chunks[cls.turn]
            if c not in look:
                look.append(c)
    chosen: Chunk | None = None
    for c in look:
        sample = c.tokens[:: max(1, c.n // 32)]
        # (the sample list holds each sampled token once more; it must go before the scan)
        free = sum(n == _FREE_COUNT + 1 for n in _refcounts(sample))
        n_sample = len(sample)
        del sample
        if free * 4 < n_sample:
            continue
        reusable, used = c.scan()
        if chosen is None and len(reusable) * 4 >= c.n:
            chosen = c
            c.free = reusable[::-1]
        elif used == 0 and c in chunks:
            chunks.remove(c)  # nothing in it is in use: give its memory back
    if chosen is None:
        size = _CHUNK if chunks else _FIRST_CHUNK
        chosen = Chunk(cls, max(size, cls.bsize * _MIN_BLOCKS))
        chunks.append(chosen)
    cls.current = chosen
    try:
        return chosen, chosen.free.pop()
    except IndexError:  # other threads took them all meanwhile: try again
        return _refill(cls)


def _sweep() -> None:
    """Give back every chunk none of whose blocks is in use."""
    with _lock:
        for cls in _classes:
            kept = [c for c in cls.chunks if c.scan()[1] != 0]
            if len(kept) != len(cls.chunks):
                cls.chunks = kept
                if cls.current is not None and cls.current not in kept:
                    cls.current = None


def stats() -> dict[str, Any]:
    """This node's (OS process's) tensor memory; see `numbeam.tensors.stats`."""
    with _lock:
        blocks = 0
        block_bytes = 0
        chunks = 0
        arena_reserved = 0
        for cls in _classes:
            for c in cls.chunks:
                chunks += 1
                live = c.scan()[1]
                blocks += live
                block_bytes += live * c.bsize
                arena_reserved += c.seg.size
        c_ = _counters
        dedicated = c_.own_segments
        return {
            "buffers": blocks + dedicated,
            "bytes": block_bytes + (c_.reserved - arena_reserved),
            "reserved": c_.reserved,
            "segments": chunks + dedicated,
            "mapped": c_.mapped,
            "mapped_bytes": c_.mapped_bytes,
            "budget": settings.budget,
            "threshold": settings.threshold,
            "devices": {name: dc.as_dict() for name, dc in sorted(_devices.items())},
        }
