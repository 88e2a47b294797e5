"""Tensor shared memory in one process: stats, arena reuse, shipped blocks, threads, the budget,
allocation failure, unnamed segments and their release."""

from __future__ import annotations

import errno
import gc
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numbeam.tensors import _memory
from numbeam.transport._wire import Encoder

import numbeam as nb

KIB = 1024
MIB = 1024 * 1024


def u8(nbytes: int, fill: int = 0) -> nb.Tensor:
    return nb.tensor(np.full(nbytes, fill % 256, np.uint8))


def block_of(t: nb.Tensor) -> tuple[Any, int]:
    """(chunk, block index) of an arena tensor."""
    assert t._chunk is not None and t._tok is not None
    return t._chunk, t._tok[0]


def addr(t: nb.Tensor) -> int:
    return int(t.numpy().__array_interface__["data"][0])


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_keys() -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every file this process has open."""
    keys = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:  # the directory listing's own descriptor, closed by now
            continue
        keys.add((st.st_dev, st.st_ino))
    return keys


def maps() -> list[tuple[int, int, str, int, int, str]]:
    """(start, end, perms, st_dev, inode, path) for each mapping of this process."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            major, minor = (int(x, 16) for x in fields[3].split(":"))
            path = fields[5].strip() if len(fields) > 5 else ""
            out.append((lo, hi, fields[1], os.makedev(major, minor), int(fields[4]), path))
    return out


def mapping_at(address: int) -> tuple[int, int, str, int, int, str]:
    found = [m for m in maps() if m[0] <= address < m[1]]
    assert len(found) == 1, found
    return found[0]


def mapped_keys() -> set[tuple[int, int]]:
    return {(m[3], m[4]) for m in maps() if m[4]}


@pytest.fixture(autouse=True)
def _collected() -> None:
    gc.collect()


# ----------------------------------------------------------------------------- stats


def test_stats_keys() -> None:
    s = nb.tensors.stats()
    assert set(s) == {
        "buffers",
        "bytes",
        "reserved",
        "segments",
        "mapped",
        "mapped_bytes",
        "budget",
        "threshold",
        "devices",
    }
    assert s["threshold"] == 64


def test_stats_follow_live_tensors() -> None:
    before = nb.tensors.stats()
    small = [u8(KIB, i) for i in range(10)]
    large = [u8(MIB, i) for i in range(2)]
    inline = [u8(64, i) for i in range(5)]  # not counted
    during = nb.tensors.stats()
    assert during["buffers"] - before["buffers"] == 12
    assert during["bytes"] - before["bytes"] == 10 * KIB + 2 * MIB
    assert during["reserved"] - before["reserved"] >= 2 * MIB
    assert during["segments"] - before["segments"] >= 2
    assert during["bytes"] <= during["reserved"]
    del small, large, inline
    gc.collect()
    after = nb.tensors.stats()
    assert after["buffers"] == before["buffers"]
    assert after["bytes"] == before["bytes"]
    assert after["segments"] <= during["segments"] - 2  # the large segments are gone
    assert after["reserved"] <= during["reserved"] - 2 * MIB


def test_stats_count_views_as_holders() -> None:
    before = nb.tensors.stats()["buffers"]
    views = [u8(4 * KIB, i).numpy() for i in range(3)] + [u8(300 * KIB).numpy()]
    assert nb.tensors.stats()["buffers"] == before + 4
    del views
    assert nb.tensors.stats()["buffers"] == before


def test_arena_buffer_counts_its_block() -> None:
    before = nb.tensors.stats()["bytes"]
    t = u8(1000)  # a 1 KiB block
    assert nb.tensors.stats()["bytes"] - before == KIB
    del t
    assert nb.tensors.stats()["bytes"] == before


# ----------------------------------------------------------------------------- the arena


def test_arena_blocks_are_reused() -> None:
    u8(KIB)  # make sure the class has a chunk
    reserved = nb.tensors.stats()["reserved"]
    blocks = set()
    for i in range(20_000):  # 20 MiB if nothing were reused
        t = u8(KIB, i)
        assert t.numpy()[0] == i % 256
        blocks.add((id(t._chunk), t._tok[0]))  # type: ignore[index]
        del t
    assert len(blocks) <= 2048
    assert nb.tensors.stats()["reserved"] - reserved <= 4 * MIB


def test_arena_with_many_live_tensors_then_reuse() -> None:
    keep = [u8(KIB, i) for i in range(3000)]
    peak = nb.tensors.stats()["reserved"]
    del keep
    for _round in range(5):
        keep = [u8(KIB, i + 1) for i in range(3000)]
        assert all(t.numpy()[0] == (i + 1) % 256 for i, t in enumerate(keep))
        del keep
    assert nb.tensors.stats()["reserved"] <= peak


def test_small_tensors_share_segments() -> None:
    before = nb.tensors.stats()["segments"]
    keep = [u8(200, i) for i in range(500)]
    assert nb.tensors.stats()["segments"] - before <= 2
    assert len({t._mem for t in keep}) <= 2


def test_every_size_class() -> None:
    for shift in range(6, 19):
        for nbytes in (2**shift - 1, 2**shift, 2**shift + 1):
            if nbytes <= 64:
                continue
            t = u8(nbytes, nbytes)
            assert t.shared
            assert t.nbytes == nbytes
            assert (t.numpy() == nbytes % 256).all()
            if nbytes <= 256 * KIB:
                assert t._chunk is not None and t._chunk.bsize >= nbytes
            else:
                assert t._chunk is None
                assert t._mem.size == nbytes  # type: ignore[union-attr]


def test_live_blocks_are_never_shared() -> None:
    keep = [u8(KIB, i) for i in range(2000)]
    for i in range(0, 2000, 2):
        keep[i] = None  # type: ignore[call-overload]
    fresh = [u8(KIB, 255) for _ in range(2000)]
    live = [t for t in keep if t is not None] + fresh
    assert len({addr(t) for t in live}) == len(live)
    assert all(t.numpy()[0] == i % 256 for i, t in enumerate(keep) if t is not None)
    assert all((t.numpy() == 255).all() for t in fresh)


def _churn(count: int, nbytes: int = KIB) -> list[tuple[Any, int]]:
    """Make and drop ``count`` tensors of ``nbytes``; the blocks they got."""
    got = []
    for i in range(count):
        t = u8(nbytes, i)
        got.append(block_of(t))
        del t
    return got


@pytest.mark.parametrize("nbytes", [KIB, 8 * KIB, 64 * KIB, 100 * KIB, 200 * KIB])
def test_dropped_block_comes_back(nbytes: int) -> None:
    t = u8(nbytes, 1)
    block = block_of(t)
    del t
    # Blocks are handed out in order round the chunk: this one comes back within two rounds.
    assert block in _churn(2 * block[0].n + 100, nbytes)


@pytest.mark.parametrize("nbytes", [100 * KIB, 200 * KIB])
def test_arena_memory_stays_bounded_in_large_classes(nbytes: int) -> None:
    # One live tensor at a time: the class needs a chunk or two, however many are made.
    u8(nbytes)
    before = nb.tensors.stats()
    _churn(200, nbytes)
    after = nb.tensors.stats()
    assert after["reserved"] - before["reserved"] <= 8 * MIB
    assert after["segments"] - before["segments"] <= 2


def _ship(t: nb.Tensor) -> None:
    """Encode ``t`` for a peer on this host, as a node does: its block is marked shipped."""
    enc = Encoder()
    enc.handle_seq = 1
    frames: list[Any] = []
    enc.encode(t, frames)
    assert frames == []
    assert enc.fds == [t._mem.fd]  # type: ignore[union-attr]


@pytest.mark.parametrize("nbytes", [KIB, 2 * KIB, 200 * KIB])
def test_shipped_block_is_never_handed_out_again(nbytes: int) -> None:
    shipped = u8(nbytes, 1)
    kept = u8(nbytes, 2)  # the control: dropped too, but not shipped
    chunk, index = block_of(shipped)
    control = block_of(kept)
    _ship(shipped)
    assert index in chunk.shipped
    assert control[1] not in control[0].shipped
    del shipped, kept
    gc.collect()
    got = _churn(2 * chunk.n + 100, nbytes)
    assert control in got
    assert (chunk, index) not in got
    keep = [u8(nbytes, 3) for _ in range(chunk.n + 10)]  # nor to live tensors
    assert (chunk, index) not in [block_of(k) for k in keep]


def test_shipped_block_marked_directly() -> None:
    t = u8(2 * KIB, 1)
    chunk, index = block_of(t)
    chunk.shipped.add(index)
    del t
    assert (chunk, index) not in _churn(2 * chunk.n + 100, 2 * KIB)


def test_shipped_block_counts_as_free_in_stats() -> None:
    before = nb.tensors.stats()["buffers"]
    t = u8(KIB, 1)
    _ship(t)
    assert nb.tensors.stats()["buffers"] == before + 1
    del t
    assert nb.tensors.stats()["buffers"] == before


def run_threads(work: Callable[[int], None], n: int) -> None:
    """Run ``work(k)`` in n threads at once, switching between them often (races show up)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
            assert not th.is_alive()
    finally:
        sys.setswitchinterval(interval)


def test_arena_is_thread_safe() -> None:
    n_threads, per_thread = 4, 5000
    results: list[list[nb.Tensor]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def work(k: int) -> None:
        try:
            start.wait(timeout=10)
            out = results[k]
            for i in range(per_thread):
                out.append(nb.tensor(np.full(256, k * 1_000_000 + i, np.int32)))
        except BaseException as e:  # reported below
            errors.append(e)

    run_threads(work, n_threads)
    assert not errors, errors
    for k, out in enumerate(results):
        assert len(out) == per_thread
        for i, t in enumerate(out):
            a = t.numpy()
            assert a[0] == a[-1] == k * 1_000_000 + i, (k, i)
    everything = [t for out in results for t in out]
    assert len({addr(t) for t in everything}) == n_threads * per_thread


def test_threads_dropping_and_making() -> None:
    # Threads that drop tensors while others refill from the same size class.
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            start.wait(timeout=10)
            keep: list[nb.Tensor] = []
            for i in range(3000):
                keep.append(nb.tensor(np.full(128, k * 100_000 + i, np.int32)))
                if len(keep) > 50:
                    keep.pop(0)
                for j, t in enumerate(keep):
                    if t.numpy()[0] != k * 100_000 + i - len(keep) + 1 + j:
                        raise AssertionError(f"thread {k}: tensor {j} changed")
        except BaseException as e:
            errors.append(e)

    run_threads(work, 4)
    assert not errors, errors


# ----------------------------------------------------------------------------- the budget


async def test_budget() -> None:
    try:
        async with nb.Runtime(tensor_budget=8 * MIB):
            assert nb.tensors.stats()["budget"] == 8 * MIB
            with pytest.raises(MemoryError, match="budget") as info:
                nb.tensor(np.zeros(16 * MIB, np.uint8))
            assert "tensor_budget" in str(info.value)
            with pytest.raises(MemoryError, match="budget"):
                nb.tensors.Builder((16 * MIB,), "u8")
            small = nb.tensor(np.arange(1000))
            assert small.shared
            assert small.tolist() == list(range(1000))
            within = u8(MIB, 3)
            assert (within.numpy() == 3).all()
            del within
        async with nb.Runtime():
            assert nb.tensors.stats()["budget"] is None
            big = u8(16 * MIB, 1)
            assert big.numpy()[-1] == 1
    finally:
        _memory.configure(budget=None)


async def test_budget_frees_idle_chunks() -> None:
    # Chunks none of whose blocks is in use count against the budget only until needed.
    try:
        async with nb.Runtime(tensor_budget=16 * MIB):
            keep = [u8(64 * KIB, i) for i in range(150)]  # ~10 MiB of arena chunks
            del keep
            big = u8(12 * MIB, 1)
            assert big.numpy()[0] == 1
    finally:
        _memory.configure(budget=None)


def test_configure_rejects_bad_values() -> None:
    for bad in (0, -1, 1.5, True, "8M"):
        with pytest.raises(ValueError, match="tensor_budget"):
            _memory.configure(budget=bad)  # type: ignore[arg-type]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tensor_threshold"):
            _memory.configure(threshold=bad)  # type: ignore[arg-type]
    assert _memory.settings.budget is None
    assert _memory.settings.threshold == 64


# ----------------------------------------------------------------------------- allocation failure


def test_full_shared_memory_is_a_memory_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = fd_count()
    monkeypatch.setattr(_memory.os, "posix_fallocate", full)
    with pytest.raises(MemoryError, match="shared memory"):
        nb.tensor(np.zeros(MIB, np.uint8))
    with pytest.raises(MemoryError, match="shared memory"):
        nb.tensors.Builder((MIB,), "u8")
    assert fd_count() == before
    monkeypatch.undo()
    t = u8(MIB, 2)  # works again
    assert t.numpy()[0] == 2


def test_other_allocation_errors_close_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    before = fd_count()
    monkeypatch.setattr(_memory.os, "posix_fallocate", broken)
    with pytest.raises(OSError) as info:
        nb.tensor(np.zeros(MIB, np.uint8))
    assert info.value.errno == errno.EIO
    assert fd_count() == before


def test_memfd_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_tmpfile(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if path == _memory._SHM_DIR and flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(_memory.os, "open", no_tmpfile)
    t = u8(MIB, 6)
    monkeypatch.undo()
    line = mapping_at(addr(t))
    assert line[5].startswith("/memfd:numbeam")
    assert line[5].endswith("(deleted)")
    assert (t.numpy() == 6).all()


# ----------------------------------------------------------------------------- segments


def shm_entries() -> dict[str, tuple[int, int]]:
    out = {}
    for name in os.listdir("/dev/shm"):
        try:
            st = os.stat(os.path.join("/dev/shm", name))
        except OSError:  # another process's entry, gone meanwhile
            continue
        out[name] = (st.st_dev, st.st_ino)
    return out


def test_segments_are_unnamed() -> None:
    before = shm_entries()
    large = u8(MIB, 1)
    small = u8(KIB, 1)
    after = shm_entries()
    # (POSIX semaphores of other processes on the host may come and go meanwhile)
    assert [n for n in after if n not in before and not n.startswith("sem.")] == []
    keys = {large._mem.key, small._mem.key}  # type: ignore[union-attr]
    assert keys.isdisjoint(after.values())
    for t in (large, small):
        lo, hi, perms, dev, inode, path = mapping_at(addr(t))
        assert perms.endswith("s"), perms  # MAP_SHARED
        assert perms.startswith("rw")
        assert path.startswith(("/dev/shm/#", "/memfd:")), path
        assert path.endswith("(deleted)"), path
        assert (dev, inode) == t._mem.key  # type: ignore[union-attr]
        assert hi - lo >= t._mem.size  # type: ignore[union-attr]


def test_large_segment_is_freed_when_dropped() -> None:
    t = u8(2 * MIB, 1)
    key = t._mem.key  # type: ignore[union-attr]
    assert key in mapped_keys()
    assert key in fd_keys()
    del t
    gc.collect()
    assert key not in mapped_keys()
    assert key not in fd_keys()
    assert key not in _memory._by_inode


def test_large_segment_lives_while_a_view_does() -> None:
    view = u8(2 * MIB, 9).numpy()
    key = mapping_at(int(view.__array_interface__["data"][0]))[3:5]
    gc.collect()
    assert key in mapped_keys()
    assert (view == 9).all()
    del view
    gc.collect()
    assert key not in mapped_keys()


def test_map_segment_of_an_own_fd_is_the_same_segment() -> None:
    t = u8(MIB, 1)
    seg = t._mem
    assert isinstance(seg, _memory.Segment)
    before = fd_count()
    fd = os.dup(seg.fd)
    assert _memory.map_segment(fd) is seg
    assert fd_count() == before  # the duplicate was closed
    small = u8(KIB, 1)
    chunk_seg = small._mem
    assert _memory.map_segment(os.dup(chunk_seg.fd)) is chunk_seg  # type: ignore[union-attr]
    assert fd_count() == before


def test_map_segment_of_a_foreign_file_is_read_only() -> None:
    fd = os.memfd_create("foreign", os.MFD_CLOEXEC)
    os.write(fd, bytes(range(256)) * 16)
    before = nb.tensors.stats()
    seg = _memory.map_segment(fd)
    assert not seg.own
    assert seg.size == 4096
    during = nb.tensors.stats()
    assert during["mapped"] - before["mapped"] == 1
    assert during["mapped_bytes"] - before["mapped_bytes"] == 4096
    assert during["reserved"] == before["reserved"]
    assert mapping_at(seg.addr)[2].startswith("r-")  # read-only
    again = os.dup(fd)
    assert _memory.map_segment(again) is seg
    del seg
    gc.collect()
    after = nb.tensors.stats()
    assert (after["mapped"], after["mapped_bytes"]) == (before["mapped"], before["mapped_bytes"])


def test_map_segment_of_an_empty_file() -> None:
    fd = os.memfd_create("empty", os.MFD_CLOEXEC)
    before = fd_count()
    with pytest.raises(ValueError, match="empty"):
        _memory.map_segment(fd)
    assert fd_count() == before - 1  # taken over and closed
