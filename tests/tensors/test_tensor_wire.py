"""Tensors through the wire codec, in one process: inline bytes, zero-copy frames, handles to
shared memory passed over an FdChannel, and malformed tensor payloads (WireError only)."""

from __future__ import annotations

import functools
import gc
import logging
import os
import select
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from msgpack import ExtType
from numbeam.tensors import DTYPES, _memory
from numbeam.tensors._share import FdChannel, PassedFd
from numbeam.transport._wire import Decoder, Encoder, WireError

import numbeam as nb

MIB = 1024 * 1024


def tag(code: int) -> ExtType:
    return ExtType(code, b"")


def raw(obj: Any) -> bytes:
    """Hand-made wire bytes: plain msgpack with our tags in it."""
    return msgpack.packb(obj, use_bin_type=True)


def addr(a: Any) -> int:
    return int(np.asarray(a).__array_interface__["data"][0])


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def round_trip(obj: Any, enc: Encoder | None = None) -> tuple[Any, list[Any]]:
    frames: list[Any] = []
    data = (enc or Encoder()).encode(obj, frames)
    return Decoder().decode(data, frames), frames


def assert_same_tensor(got: Any, want: nb.Tensor) -> None:
    assert isinstance(got, nb.Tensor)
    assert (got.dtype, got.shape, got.nbytes) == (want.dtype, want.shape, want.nbytes)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.fixture
def channels() -> Iterator[tuple[FdChannel, FdChannel]]:
    """Two descriptor channels in this process; ``a`` may pass descriptors to ``b``.

    (Senders are told apart by OS pid: here ``b`` allows this process. ``a``'s socket that
    sends to ``b`` is opened now, so that descriptor counts taken later do not see it.)
    """
    a, b = FdChannel(), FdChannel()
    b.allowed.add(os.getpid())
    a.sender(b.address)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- inline


@pytest.mark.parametrize("name", list(DTYPES))
def test_inline_tensors_round_trip(name: str) -> None:
    t = nb.tensor([1, 2, 3], name)
    assert not t.shared
    got, frames = round_trip(t)
    assert frames == []
    assert_same_tensor(got, t)
    assert not got.shared
    assert got is not t


@pytest.mark.parametrize("shape", [(), (0,), (2, 0), (1, 1, 1)])
def test_inline_shapes(shape: tuple[int, ...]) -> None:
    t = nb.tensor(np.ones(shape, np.int16))
    got, _ = round_trip(t)
    assert_same_tensor(got, t)
    assert isinstance(got.shape, tuple)


def test_inline_tensor_with_handles_enabled_stays_inline() -> None:
    enc = Encoder()
    enc.handle_seq = 3
    t = nb.tensor([1.5, 2.5])
    got, frames = round_trip(t, enc)
    assert frames == []
    assert enc.fds == []  # no descriptor to pass
    assert not enc.shared_bytes
    assert_same_tensor(got, t)


def test_encoder_notes_shared_tensors_sent_as_bytes() -> None:
    # Without handles, a tensor in shared memory crosses as bytes; the node is told so.
    for t in (nb.tensor(np.zeros(256, np.float32)), nb.tensor(np.zeros(MIB, np.uint8))):
        enc = Encoder()
        assert not enc.shared_bytes
        enc.encode(["x", nb.tensor([1, 2])], [])
        assert not enc.shared_bytes
        enc.encode(["x", t], [])
        assert enc.shared_bytes
        assert enc.fds == []


def test_arena_tensor_below_frame_size_goes_as_bytes() -> None:
    t = nb.tensor(np.arange(256, dtype=np.float32))  # 1 KiB: shared, but no frame
    got, frames = round_trip(t)
    assert frames == []
    assert_same_tensor(got, t)
    assert got.shared  # the receiver keeps it in its shared memory
    assert addr(got.numpy()) != addr(t.numpy())


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("name", ["u8", "bf16", "f32", "c128"])
def test_large_tensor_goes_as_a_zero_copy_frame(name: str) -> None:
    n = MIB // DTYPES[name].itemsize
    t = nb.tensor(np.arange(n) % 97, name)
    frames: list[Any] = []
    data = Encoder().encode(t, frames)
    assert len(data) < 100
    assert len(frames) == 1
    assert addr(frames[0]) == addr(t.numpy())  # the tensor's own bytes, not a copy
    assert memoryview(frames[0]).nbytes == t.nbytes
    got = Decoder().decode(data, frames)
    assert_same_tensor(got, t)
    assert got.shared
    assert addr(got.numpy()) != addr(t.numpy())  # a new tensor in the receiver's memory


def test_frame_decodes_from_bytes() -> None:
    # What a receiver gets from ZeroMQ need not be a numpy array.
    t = nb.tensor(np.arange(MIB // 4, dtype=np.int32).reshape(512, 512))
    frames: list[Any] = []
    data = Encoder().encode(t, frames)
    got = Decoder().decode(data, [bytes(memoryview(frames[0]))])
    assert_same_tensor(got, t)


def test_frame_keeps_the_tensor_alive() -> None:
    frames: list[Any] = []
    data = Encoder().encode(nb.tensor(np.full(MIB, 5, np.uint8)), frames)
    gc.collect()
    others = [nb.tensor(np.full(MIB, 6, np.uint8)) for _ in range(3)]
    got = Decoder().decode(data, frames)
    assert (got.numpy() == 5).all()
    assert (others[0].numpy() == 6).all()


def test_oob_threshold_applies_to_tensors() -> None:
    t = nb.tensor(np.arange(256, dtype=np.float32))
    frames: list[Any] = []
    data = Encoder(oob_threshold=1024).encode(t, frames)
    assert len(frames) == 1
    assert_same_tensor(Decoder().decode(data, frames), t)


def test_tensors_nested_in_containers() -> None:
    small = nb.tensor([1, 2, 3])
    mid = nb.tensor(np.arange(1000, dtype=np.float64))
    big = nb.tensor(np.arange(MIB // 8, dtype=np.float64))
    msg = ("tag", {"small": small, "list": [mid, (big, small)], 7: {"deep": [[big]]}})
    got, frames = round_trip(msg)
    assert len(frames) == 2  # big appears twice, is framed twice
    assert got[0] == "tag"
    assert_same_tensor(got[1]["small"], small)
    assert_same_tensor(got[1]["list"][0], mid)
    assert isinstance(got[1]["list"][1], tuple)
    assert_same_tensor(got[1]["list"][1][0], big)
    assert_same_tensor(got[1]["list"][1][1], small)
    assert_same_tensor(got[1][7]["deep"][0][0], big)


def test_tensors_next_to_arrays() -> None:
    arr = np.arange(MIB // 8, dtype=np.float64)
    t = nb.tensor(arr)
    got, frames = round_trip([arr, t])
    assert len(frames) == 2
    assert isinstance(got[0], np.ndarray)
    np.testing.assert_array_equal(got[0], arr)
    assert_same_tensor(got[1], t)


# ----------------------------------------------------------------------------- malformed


def test_handle_without_claim_is_a_wire_error() -> None:
    enc = Encoder()
    enc.handle_seq = 9
    t = nb.tensor(np.arange(1000, dtype=np.float32))
    frames: list[Any] = []
    data = enc.encode(t, frames)
    assert frames == []
    with pytest.raises(WireError, match="did not arrive"):
        Decoder().decode(data, frames)
    dec = Decoder()
    dec.claim = lambda seq: None
    with pytest.raises(WireError, match="did not arrive"):
        dec.decode(data, frames)


@pytest.fixture
def segment() -> _memory.Segment:
    seg = nb.tensor(np.zeros(1000, np.float32))._mem
    assert isinstance(seg, _memory.Segment)
    return seg


@pytest.mark.parametrize(
    "payload",
    [
        [tag(15), "f8", [2], b"\0" * 16],
        [tag(15), "float32", [2], b"\0" * 8],
        [tag(15), 5, [2], b"\0" * 8],
        [tag(15), None, [2], b"\0" * 8],
        [tag(15), "f32", [2], b"\0" * 7],
        [tag(15), "f32", [2], b"\0" * 9],
        [tag(15), "f32", [2], "\0" * 8],
        [tag(15), "f32", [-1], b""],
        [tag(15), "f32", [2.0], b"\0" * 8],
        [tag(15), "f32", 2, b"\0" * 8],
        [tag(15), "f32", [1] * 65, b"\0" * 4],
        [tag(15), "f32", [2]],
        [tag(15), "f32", [2], b"\0" * 8, 0],
        [tag(15), "f32", [1000], b"\0" * 3996],
        [tag(16), "f32", [4], 0],
        [tag(16), "f32", [4], -1],
        [tag(16), "f32", [4], "0"],
        [tag(16), "x", [4], 0],
        [tag(16), "f32", [-4], 0],
        [tag(17), "f32", [4], 1, 0, 0],
        [tag(17), "nope", [4], 1, 0, 0],
        [tag(17), "f32", [-4], 1, 0, 0],
        [tag(17), "f32", [4], "1", 0, 0],
        [tag(17), "f32", [4], 1, 0],
    ],
)
def test_malformed_tensor_payloads(payload: list[Any]) -> None:
    with pytest.raises(WireError):
        Decoder().decode(raw(payload))
    with pytest.raises(WireError):
        Decoder().decode(raw(("wrapped", [payload])))


def test_frame_of_the_wrong_size() -> None:
    with pytest.raises(WireError, match="frame 0"):
        Decoder().decode(raw([tag(16), "f32", [4], 0]), [b"\0" * 15])
    with pytest.raises(WireError, match="frame 1"):
        Decoder().decode(raw([tag(16), "f32", [4], 1]), [b"\0" * 16])


@pytest.mark.parametrize(
    ("index", "offset", "match"),
    [
        (0, "end-12", "outside"),  # 16 bytes asked for, 12 left
        (0, "end", "outside"),
        (0, -1, "outside"),
        (0, 2**62, "outside"),
        (0, "0", "outside"),
        (0, None, "outside"),
        (1, 0, "segment 1"),
        (-1, 0, "segment -1"),
        ("0", 0, "segment"),
    ],
)
def test_malformed_handles(segment: _memory.Segment, index: Any, offset: Any, match: str) -> None:
    if offset == "end-12":
        offset = segment.size - 12
    elif offset == "end":
        offset = segment.size
    dec = Decoder()
    dec.claim = lambda seq: [segment]
    with pytest.raises(WireError, match=match):
        dec.decode(raw([tag(17), "f32", [4], 1, index, offset]))


def test_handle_inside_a_segment(segment: _memory.Segment) -> None:
    dec = Decoder()
    dec.claim = lambda seq: [segment]
    got = dec.decode(raw([tag(17), "u8", [16], 1, 0, segment.size - 16]))
    assert got._mem is segment
    assert got.shape == (16,)
    empty = dec.decode(raw([tag(17), "u8", [0], 1, 0, segment.size]))
    assert empty.shape == (0,)
    assert not empty.shared


def test_claim_is_asked_once_per_token(segment: _memory.Segment) -> None:
    asked: list[int] = []

    def claim(seq: int) -> list[_memory.Segment]:
        asked.append(seq)
        return [segment]

    dec = Decoder()
    dec.claim = claim
    msg = [[tag(17), "u8", [8], 4, 0, 8 * i] for i in range(5)]
    got = dec.decode(raw(msg))
    assert asked == [4]
    assert [t._off for t in got] == [0, 8, 16, 24, 32]
    dec.decode(raw(msg))  # a new message claims again
    assert asked == [4, 4]


# ----------------------------------------------------------------------------- handles


def _send(a: FdChannel, b: FdChannel, obj: Any) -> tuple[bytes, Decoder, Encoder]:
    """Encode ``obj`` for the node at ``b`` as a node on the host does; pass the fds ahead."""
    enc = Encoder()
    enc.handle_seq = a.next_token()
    enc.fds = []
    enc.fd_at = {}
    frames: list[Any] = []
    data = enc.encode(obj, frames)
    assert frames == []
    a.send(b.address, enc.handle_seq, enc.fds)
    dec = Decoder()
    dec.claim = functools.partial(b.claim, os.getpid())
    return data, dec, enc


@pytest.mark.parametrize("nbytes", [1024, 200 * 1024, 2 * MIB])
def test_handle_in_process(channels: tuple[FdChannel, FdChannel], nbytes: int) -> None:
    a, b = channels
    t = nb.tensor((np.arange(nbytes // 4) % 1000).astype(np.float32))
    before = fd_count()
    data, dec, enc = _send(a, b, ("msg", t))
    assert enc.fds == [t._mem.fd]  # type: ignore[union-attr]
    assert not enc.shared_bytes
    assert len(data) < 100  # a handle, not the bytes
    got = dec.decode(data)
    assert got[0] == "msg"
    assert_same_tensor(got[1], t)
    # One process: the segment is found by its inode, the mapping reused.
    assert got[1]._mem is t._mem
    assert addr(got[1].numpy()) == addr(t.numpy())
    assert not got[1].numpy().flags.writeable
    assert fd_count() == before  # the received duplicate was closed
    assert b.pending == {}
    if t._chunk is not None:
        assert t._tok[0] in t._chunk.shipped  # type: ignore[index]


def test_handles_share_descriptors(channels: tuple[FdChannel, FdChannel]) -> None:
    a, b = channels
    small = [nb.tensor(np.full(256, i, np.float32)) for i in range(4)]
    large = nb.tensor(np.full(MIB, 1, np.uint8))
    msg = [*small, large, small[0]]
    data, dec, enc = _send(a, b, msg)
    want_fds = list(dict.fromkeys(t._mem.fd for t in msg))  # type: ignore[union-attr]
    assert enc.fds == want_fds
    got = dec.decode(data)
    for g, want in zip(got, msg, strict=True):
        assert_same_tensor(g, want)
        assert g._mem is want._mem


def test_handle_of_a_foreign_segment(channels: tuple[FdChannel, FdChannel]) -> None:
    # A segment this process never mapped: mapped read-only, counted as mapped, then freed.
    a, b = channels
    values = np.arange(1024, dtype=np.float32)
    fd = os.memfd_create("peer", os.MFD_CLOEXEC)
    try:
        os.write(fd, values.tobytes())
        before = nb.tensors.stats()
        token = a.next_token()
        a.send(b.address, token, [fd])
    finally:
        os.close(fd)
    dec = Decoder()
    dec.claim = functools.partial(b.claim, os.getpid())
    got = dec.decode(raw([tag(17), "f32", [32, 32], token, 0, 0]))
    assert isinstance(got, nb.Tensor)
    assert not got._mem.own
    assert got.shared
    np.testing.assert_array_equal(got.numpy().reshape(-1), values)
    with pytest.raises(ValueError):
        got.numpy()[0, 0] = 1
    during = nb.tensors.stats()
    assert during["mapped"] == before["mapped"] + 1
    assert during["mapped_bytes"] == before["mapped_bytes"] + values.nbytes
    key = got._mem.key
    del got
    gc.collect()
    after = nb.tensors.stats()
    assert (after["mapped"], after["mapped_bytes"]) == (before["mapped"], before["mapped_bytes"])
    assert key not in _memory._by_inode


def test_claim_of_a_missing_token(channels: tuple[FdChannel, FdChannel]) -> None:
    _, b = channels
    assert b.claim(os.getpid(), 999) is None
    assert b.claim(os.getpid() + 1, 1) is None
    assert b.claim(os.getpid(), "1") is None


def test_unclaimed_older_datagrams_are_closed(channels: tuple[FdChannel, FdChannel]) -> None:
    a, b = channels
    t = nb.tensor(np.zeros(MIB, np.uint8))
    fd = t._mem.fd  # type: ignore[union-attr]
    before = fd_count()
    a.send(b.address, a.next_token(), [fd])
    token = a.next_token()
    a.send(b.address, token, [fd])
    b.drain()
    assert fd_count() == before + 2
    assert b.claim(os.getpid(), token) == [t._mem]
    assert fd_count() == before  # the older batch never came: its descriptor is closed
    assert b.pending == {}


def test_a_descriptor_that_is_not_shared_memory_is_claimed_unmapped(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    """A CUDA pool's descriptor (here a pipe's, as a stand-in) comes back with its fd, unmapped,
    beside a segment of the same batch; it is closed when dropped, and a tensor handle that
    names it is malformed."""
    a, b = channels
    t = nb.tensor(np.zeros(MIB, np.uint8))
    r, w = os.pipe()
    try:
        before = fd_count()
        token = a.next_token()
        a.send(b.address, token, [t._mem.fd, r])  # type: ignore[union-attr]
        got = b.claim(os.getpid(), token)
        assert got is not None and got[0] is t._mem
        [_, passed] = got
        assert type(passed) is PassedFd
        os.write(w, b"x")
        assert os.read(passed.fd, 1) == b"x"  # the pipe itself
        assert fd_count() == before + 1
        enc = Encoder()
        enc.handle_seq, enc.fds, enc.fd_at = 1, [], {}
        data = enc.encode(t, [])
        dec = Decoder()
        dec.claim = lambda seq, p=passed: [p]
        with pytest.raises(WireError, match="names descriptor 0, not a shared-memory one"):
            dec.decode(data)
        del got, passed
        dec.claim = None
        gc.collect()
        assert fd_count() == before
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("allowed", [set(), {1}], ids=["nobody", "another pid"])
def test_datagrams_from_strangers_are_dropped(
    channels: tuple[FdChannel, FdChannel], caplog: pytest.LogCaptureFixture, allowed: set[int]
) -> None:
    caplog.set_level(logging.WARNING, logger="numbeam")
    a, b = channels
    b.allowed.clear()
    b.allowed.update(allowed)
    t = nb.tensor(np.zeros(MIB, np.uint8))
    fd = t._mem.fd  # type: ignore[union-attr]
    before = fd_count()
    token = a.next_token()
    a.send(b.address, token, [fd, fd])
    b.drain()
    assert fd_count() == before  # their descriptors were closed
    assert b.pending == {}
    assert b.claim(os.getpid(), token) is None
    records = [r for r in caplog.records if r.name == "numbeam"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "dropped" in records[0].getMessage()


def test_forget_and_close_release_pending(channels: tuple[FdChannel, FdChannel]) -> None:
    a, b = channels
    t = nb.tensor(np.zeros(MIB, np.uint8))
    fd = t._mem.fd  # type: ignore[union-attr]
    before = fd_count()
    a.send(b.address, a.next_token(), [fd])
    b.drain()
    assert fd_count() == before + 1
    b.forget(os.getpid())
    assert fd_count() == before
    assert os.getpid() not in b.allowed
    c = FdChannel()
    try:
        c.allowed.add(os.getpid())
        a.send(c.address, a.next_token(), [fd])
        c.drain()
        assert len(c.pending) == 1
    finally:
        c.close()
        a.drop_sender(c.address)
    assert fd_count() == before


def test_handle_survives_the_sender_dropping_its_tensor(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    # The descriptor in flight keeps the segment: drop every local reference before decoding.
    a, b = channels
    t = nb.tensor(np.full(2 * MIB, 42, np.uint8))
    data, dec, _ = _send(a, b, t)
    key = t._mem.key  # type: ignore[union-attr]
    del t
    gc.collect()
    assert key not in _memory._by_inode  # the sender's mapping is gone
    got = dec.decode(data)
    assert (got.numpy() == 42).all()
    assert not got._mem.own  # mapped again, from the descriptor, read-only
    assert got._mem.key == key


def test_a_full_receiver_is_back_pressure_until_it_drains(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    # The kernel queues only net.unix.max_dgram_qlen datagrams for a receiver (10 by
    # default): past that, sending raises BlockingIOError, and the connected sender becomes
    # writable again once the receiver has taken some; nothing is lost on the way.
    a, b = channels
    t = nb.tensor(np.zeros(MIB, np.uint8))
    fd = t._mem.fd  # type: ignore[union-attr]
    sent = []
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):
            token = a.next_token()
            a.send(b.address, token, [fd])
            sent.append(token)
    sock = a.sender(b.address)
    assert select.select([], [sock], [], 0)[1] == []  # full: not writable
    b.drain()
    assert select.select([], [sock], [], 5)[1] == [sock]
    token = a.next_token()
    a.send(b.address, token, [fd])
    b.drain()
    assert sorted(k[1] for k in b.pending) == [*sent, token]
    assert b.claim(os.getpid(), token) == [t._mem]
    assert b.pending == {}  # the older ones, never claimed, were closed
