"""Device tensors on fake devices (CPU-backed, the same machinery as a GPU), in one process:
making them, `to`, `array`, the refusals of `numpy`, DLPack, repr, device names, per-device
statistics, and the wire (staged bytes, handles over a descriptor channel, the move a device
worker makes on receipt, malformed device names)."""

from __future__ import annotations

import functools
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from msgpack import ExtType
from numbeam.gpu import _devices
from numbeam.tensors import DTYPES, Builder, build
from numbeam.tensors._share import FdChannel
from numbeam.transport import _wire
from numbeam.transport._wire import Decoder, Encoder, WireError

import numbeam as nb

MIB = 1024 * 1024
FAKES = ["fake:0", "fake:1"]
# Element counts: below the inline threshold for every dtype, in the arena's range, large.
SIZES = [2, 100, 40_000]


@pytest.fixture(autouse=True)
def fake_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fake devices for each test; this process is no device's worker (monkeypatch puts
    the module's globals back afterwards)."""
    monkeypatch.setattr(_devices, "_known", list(FAKES))
    monkeypatch.setattr(_devices, "_current", "cpu")


def values(name: str, n: int) -> np.ndarray:
    a = np.arange(n) % 100
    if DTYPES[name].kind == "c":
        return (a + 1j * (a % 7)).astype(DTYPES[name])
    return a.astype(DTYPES[name])


def addr(a: Any) -> int:
    return int(np.asarray(a).__array_interface__["data"][0])


def inode(t: nb.Tensor) -> int:
    return os.fstat(t._mem.fd).st_ino  # type: ignore[union-attr]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def dev_stats(device: str) -> dict[str, int]:
    return nb.tensors.stats()["devices"].get(
        device, {"buffers": 0, "bytes": 0, "exported": 0, "imported": 0}
    )


def tag(code: int) -> ExtType:
    return ExtType(code, b"")


def raw(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ----------------------------------------------------------------------------- making them


@pytest.mark.parametrize("device", FAKES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_on_a_fake_device(name: str, n: int, device: str) -> None:
    src = values(name, n)
    t = nb.tensor(src, device=device)
    assert (t.device, t.dtype, t.shape, t.nbytes) == (device, name, (n,), src.nbytes)
    assert t.shared and t._mem.device == device  # type: ignore[union-attr]
    a = t.array()
    assert isinstance(a, np.ndarray) and a.dtype == DTYPES[name]
    assert not a.flags.writeable
    np.testing.assert_array_equal(a, src)
    back = t.to("cpu")
    assert back.device == "cpu" and back.dtype == name
    np.testing.assert_array_equal(back.numpy(), src)


@pytest.mark.parametrize("device", [None, "cpu"])
def test_cpu_or_none_is_todays_behaviour(device: str | None) -> None:
    t = nb.tensor(np.arange(100, dtype=np.float32), device=device)
    assert t.device == "cpu"
    assert t._mem.device == "cpu"  # type: ignore[union-attr]
    assert nb.tensor([1, 2], device=device).device == "cpu"


def test_from_lists_scalars_and_dtypes() -> None:
    t = nb.tensor([[1, 2], [3, 4]], device="fake:0")
    assert (t.dtype, t.shape, t.device) == ("s64", (2, 2), "fake:0")
    assert t.array().tolist() == [[1, 2], [3, 4]]
    s = nb.tensor(2.5, "bf16", device="fake:1")
    assert (s.dtype, s.shape, s.array().item()) == ("bf16", (), 2.5)
    e = nb.tensor(np.zeros((0, 3), np.float32), device="fake:0")
    assert (e.shape, e.nbytes, e.device) == ((0, 3), 0, "fake:0")
    assert e.to("cpu").shape == (0, 3)
    # a tensor as data: copied to the device (converted first if asked)
    c = nb.tensor(np.arange(4, dtype=np.int32))
    on = nb.tensor(c, device="fake:0")
    assert on.device == "fake:0" and on.array().tolist() == [0, 1, 2, 3]
    f = nb.tensor(on, "f64")
    assert (f.device, f.dtype, f.array().tolist()) == ("fake:0", "f64", [0.0, 1.0, 2.0, 3.0])
    assert nb.tensor(on) is on


@pytest.mark.parametrize("device", FAKES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (64, 64), (300, 300)])
def test_build_in_place(device: str, shape: tuple[int, ...]) -> None:
    seen: list[np.ndarray] = []

    def fill(out: np.ndarray) -> None:
        assert isinstance(out, np.ndarray) and out.flags.writeable
        out[...] = 7
        seen.append(out)

    t = build(shape, "bf16", fill, device=device)
    assert (t.device, t.shape, t.dtype) == (device, shape, "bf16")
    assert (t.array() == 7).all()
    assert not seen[0].flags.writeable  # frozen
    if t.nbytes:
        assert addr(seen[0]) == addr(t.array())  # written in place, no copy


def test_builder_two_steps() -> None:
    b = Builder((4, 4), "f32", device="fake:1")
    b.array[...] = np.eye(4)
    t = b.freeze()
    assert t.device == "fake:1"
    np.testing.assert_array_equal(t.to("cpu").numpy(), np.eye(4))


# ----------------------------------------------------------------------------- to()


@pytest.mark.parametrize("n", SIZES)
def test_to_between_cpu_and_fake_devices(n: int) -> None:
    src = values("f32", n)
    cpu = nb.tensor(src)
    f0 = cpu.to("fake:0")
    f1 = f0.to("fake:1")
    back = f1.to("cpu")
    assert [t.device for t in (cpu, f0, f1, back)] == ["cpu", "fake:0", "fake:1", "cpu"]
    for t in (f0, f1):
        np.testing.assert_array_equal(t.array(), src)
    np.testing.assert_array_equal(back.numpy(), src)
    # different memory each time
    assert len({inode(f0), inode(f1)}) == 2
    assert addr(f0.array()) != addr(f1.array())
    for t in (cpu, f0, f1, back):
        assert t.to(t.device) is t


def test_fake_tensor_as_cpu_data_copies() -> None:
    f = nb.tensor(np.arange(1000, dtype=np.float32), device="fake:0")
    c = nb.tensor(f.array())  # an ordinary numpy array: a cpu tensor, a copy
    assert c.device == "cpu"
    assert addr(c.numpy()) != addr(f.array())


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("n", SIZES)
def test_numpy_and_asarray_refuse_device_tensors(n: int) -> None:
    t = nb.tensor(np.arange(n, dtype=np.float32), device="fake:0")
    with pytest.raises(TypeError, match=r"t\.to\('cpu'\)"):
        t.numpy()
    with pytest.raises(TypeError, match=r"t\.to\('cpu'\)"):
        np.asarray(t)
    with pytest.raises(TypeError, match=r"t\.to\('cpu'\)"):
        np.array(t)
    with pytest.raises(TypeError, match=r"t\.to\('cpu'\)"):
        t.tolist()


def test_array_of_cpu_tensors_is_numpy() -> None:
    for n in SIZES:
        t = nb.tensor(np.arange(n, dtype=np.float32))
        a = t.array()
        assert isinstance(a, np.ndarray) and not a.flags.writeable
        assert addr(a) == addr(t.numpy())


def test_array_keeps_the_tensor_alive() -> None:
    t = nb.tensor(np.arange(1000, dtype=np.float64), device="fake:0")
    a = t.array()
    before = dev_stats("fake:0")["buffers"]
    del t
    assert dev_stats("fake:0")["buffers"] == before  # the view holds it
    assert a[999] == 999
    del a
    assert dev_stats("fake:0")["buffers"] == before - 1


def test_dlpack_of_a_fake_tensor_is_host_memory() -> None:
    t = nb.tensor(np.arange(100, dtype=np.float32), device="fake:1")
    assert t.__dlpack_device__() == (1, 0)  # kDLCPU: fake device memory is host memory
    d = np.from_dlpack(t)
    assert addr(d) == addr(t.array())
    assert not d.flags.writeable
    # and back in: a CPU producer makes a cpu tensor
    assert nb.tensors.from_dlpack(d).device == "cpu"


def test_from_dlpack_refuses_other_device_types() -> None:
    class Odd:
        def __dlpack__(self, **kw: Any) -> Any:
            raise AssertionError("not called")

        def __dlpack_device__(self) -> tuple[int, int]:
            return (4, 0)  # kDLOpenCL

    with pytest.raises(TypeError, match="DLPack device type 4"):
        nb.tensors.from_dlpack(Odd())


def test_repr_shows_the_device() -> None:
    t = nb.tensor([1.0, 2.0], device="fake:1")
    assert "device: fake:1" in repr(t)
    assert "[1.0, 2.0]" in repr(t)
    assert "device:" not in repr(t.to("cpu"))


# ----------------------------------------------------------------------------- device names


@pytest.mark.parametrize("bad", ["fake:2", "cuda:0", "gpu:0", "fake:01", "FAKE:0", ""])
def test_unknown_devices_raise_value_error_listing_the_real_ones(bad: str) -> None:
    cpu = nb.tensor(np.zeros(100))
    calls = [
        lambda: nb.tensor([1.0], device=bad),
        lambda: build(3, "f32", lambda out: None, device=bad),
        lambda: Builder(3, "f32", device=bad),
        lambda: cpu.to(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        if bad in ("fake:2", "cuda:0"):
            assert "cpu, fake:0, fake:1" in str(info.value)


@pytest.mark.parametrize("bad", [0, 1.0, b"fake:0", ("fake", 0)])
def test_non_str_devices_raise_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        nb.tensor([1.0], device=bad)
    with pytest.raises(TypeError):
        nb.tensor(np.zeros(100)).to(bad)


def test_the_environment_names_fake_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_devices, "_known", None)
    monkeypatch.setenv("NUMBEAM_FAKE_DEVICES", "3")
    assert nb.tensor([1], device="fake:2").device == "fake:2"
    monkeypatch.setenv("NUMBEAM_FAKE_DEVICES", "0")
    with pytest.raises(ValueError, match="this node has: cpu"):
        nb.tensor([1], device="fake:0")


# ----------------------------------------------------------------------------- statistics


def test_stats_per_device_return_to_baseline() -> None:
    # Garbage of earlier tests must not be collected in the middle: collect it now, and
    # keep the collector off while counting (dropping the tensors frees them without it).
    gc.collect()
    gc.disable()
    try:
        _stats_return_to_baseline()
    finally:
        gc.enable()


def _stats_return_to_baseline() -> None:
    before = nb.tensors.stats()
    fds = fd_count()
    big = nb.tensor(np.ones(MIB, np.uint8), device="fake:0")
    small = [nb.tensor([i], device="fake:1") for i in range(5)]
    during = nb.tensors.stats()
    d0, d1 = during["devices"]["fake:0"], during["devices"]["fake:1"]
    b0 = before["devices"].get("fake:0", {"buffers": 0, "bytes": 0})
    b1 = before["devices"].get("fake:1", {"buffers": 0, "bytes": 0})
    assert d0["buffers"] == b0["buffers"] + 1
    assert d0["bytes"] == b0["bytes"] + MIB
    assert d1["buffers"] == b1["buffers"] + 5
    assert d1["bytes"] == b1["bytes"] + 5 * 8
    assert d0["exported"] == d0["imported"] == 0
    # fake device memory is none of cpu's
    for key in ("buffers", "bytes", "reserved", "segments", "mapped", "mapped_bytes"):
        assert during[key] == before[key], key
    del big, small  # no gc.collect: the kernel gets the pages back at once
    after = nb.tensors.stats()
    for device, base in (("fake:0", b0), ("fake:1", b1)):
        got = after["devices"][device]
        assert (got["buffers"], got["bytes"]) == (base["buffers"], base["bytes"]), device
    assert fd_count() == fds


def test_fake_memory_ignores_the_cpu_budget() -> None:
    _memory = nb.tensors._memory
    old = _memory.settings.budget
    _memory.configure(budget=1024)
    try:
        t = nb.tensor(np.zeros(MIB, np.uint8), device="fake:0")
        assert t.nbytes == MIB
        with pytest.raises(MemoryError):
            nb.tensor(np.zeros(MIB, np.uint8))
    finally:
        _memory.configure(budget=old)


# ----------------------------------------------------------------------------- the wire


def round_trip(obj: Any, enc: Encoder | None = None) -> tuple[Any, list[Any]]:
    frames: list[Any] = []
    data = (enc or Encoder()).encode(obj, frames)
    return Decoder().decode(data, frames), frames


@pytest.mark.parametrize("nbytes", [8, 1024, 2 * MIB])
@pytest.mark.parametrize("device", FAKES)
def test_staged_round_trip_lands_on_the_same_device(device: str, nbytes: int) -> None:
    src = (np.arange(nbytes // 4) % 1000).astype(np.float32)
    t = nb.tensor(src, device=device)
    enc = Encoder()
    got, frames = round_trip(("msg", t), enc)
    assert enc.shared_bytes
    assert len(frames) == (1 if nbytes >= 65536 else 0)
    g = got[1]
    assert (g.device, g.dtype, g.shape) == (device, "f32", src.shape)
    np.testing.assert_array_equal(g.array(), src)
    assert inode(g) != inode(t)  # staged: new memory of that device


@pytest.mark.parametrize("name", list(DTYPES))
def test_staged_every_dtype(name: str) -> None:
    src = values(name, 100)
    got, _ = round_trip(nb.tensor(src, device="fake:1"))
    assert (got.device, got.dtype) == ("fake:1", name)
    np.testing.assert_array_equal(got.array(), src)


def test_staged_cuda_tensor_lands_on_cpu_without_cuda(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wire, "cuda_count", lambda: 0)
    monkeypatch.setattr(_wire, "_warned_no_cuda", set())
    caplog.set_level(logging.WARNING, logger="numbeam")
    data = np.arange(4, dtype=np.float32)
    msg = [[tag(18), "f32", [4], data.tobytes(), "cuda:3"]] * 2
    got = Decoder().decode(raw(msg))
    for g in got:
        assert g.device == "cpu"
        np.testing.assert_array_equal(g.numpy(), data)
    warnings = [r for r in caplog.records if "cuda:3" in r.getMessage()]
    assert len(warnings) == 1  # once


def test_staged_fake_tensor_of_a_device_unknown_here_lands_there() -> None:
    got = Decoder().decode(raw([tag(18), "u8", [3], b"abc", "fake:7"]))
    assert got.device == "fake:7"
    assert bytes(got.array()) == b"abc"


def test_worker_receiving_staged_tensors_keeps_them_on_its_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_devices, "_current", "fake:1")
    for device in ("fake:0", "fake:1", "cuda:0"):
        got = Decoder().decode(raw([tag(18), "u8", [3], b"xyz", device]))
        assert got.device == "fake:1"
        assert bytes(got.array()) == b"xyz"
    cpu = round_trip(nb.tensor(np.arange(100)))[0]
    assert cpu.device == "cpu"  # cpu tensors stay cpu


@pytest.fixture
def channels() -> Iterator[tuple[FdChannel, FdChannel]]:
    a, b = FdChannel(), FdChannel()
    b.allowed.add(os.getpid())
    a.sender(b.address)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _send(a: FdChannel, b: FdChannel, obj: Any) -> tuple[bytes, Decoder, Encoder]:
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


@pytest.mark.parametrize("nbytes", [8, 1024, 2 * MIB])
def test_handle_round_trip_is_the_same_memory(
    channels: tuple[FdChannel, FdChannel], nbytes: int
) -> None:
    a, b = channels
    src = np.full(nbytes, 3, np.uint8)
    t = nb.tensor(src, device="fake:0")
    cpu = nb.tensor(np.arange(100, dtype=np.float32))
    fds = fd_count()
    data, dec, enc = _send(a, b, ("msg", t, cpu, t))
    assert enc.fds == [t._mem.fd, cpu._mem.fd]  # type: ignore[union-attr]
    assert not enc.shared_bytes
    assert len(data) < 200
    assert dev_stats("fake:0")["exported"] >= 1
    got = dec.decode(data)
    assert got[1].device == "fake:0" and got[3].device == "fake:0"
    assert got[1]._mem is t._mem  # one process: found by inode, the same mapping
    assert inode(got[1]) == inode(t)
    np.testing.assert_array_equal(got[1].array(), src)
    assert got[2].device == "cpu"
    assert fd_count() == fds


def test_exported_counts_return_to_baseline(channels: tuple[FdChannel, FdChannel]) -> None:
    a, b = channels
    base = dev_stats("fake:1")
    t = nb.tensor(np.zeros(1000), device="fake:1")
    data, dec, _ = _send(a, b, t)
    got = dec.decode(data)
    s = dev_stats("fake:1")
    assert s["exported"] == base["exported"] + 1
    assert s["buffers"] == base["buffers"] + 1
    del t, got, data, dec
    assert dev_stats("fake:1") == base


def test_handle_of_a_foreign_fake_segment_is_imported(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    a, b = channels
    data = np.arange(256, dtype=np.float32)
    fd = os.memfd_create("peer", os.MFD_CLOEXEC)
    try:
        os.write(fd, data.tobytes())
        before = nb.tensors.stats()
        token = a.next_token()
        a.send(b.address, token, [fd])
    finally:
        os.close(fd)
    dec = Decoder()
    dec.claim = functools.partial(b.claim, os.getpid())
    got = dec.decode(raw([tag(20), "f32", [16, 16], token, 0, 0, "fake:1"]))
    assert got.device == "fake:1"
    assert not got._mem.own
    np.testing.assert_array_equal(got.array().reshape(-1), data)
    during = nb.tensors.stats()
    base = before["devices"].get("fake:1", {"imported": 0})
    assert during["devices"]["fake:1"]["imported"] == base["imported"] + 1
    assert (during["mapped"], during["mapped_bytes"]) == (before["mapped"], before["mapped_bytes"])
    del got, dec
    assert nb.tensors.stats()["devices"]["fake:1"]["imported"] == base["imported"]


def test_handle_moves_to_the_workers_device(
    channels: tuple[FdChannel, FdChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = channels
    src = np.arange(1000, dtype=np.float64)
    t0 = nb.tensor(src, device="fake:0")
    t1 = nb.tensor(src, device="fake:1")
    data, dec, _ = _send(a, b, (t0, t1))
    monkeypatch.setattr(_devices, "_current", "fake:1")
    g0, g1 = dec.decode(data)
    # another device: copied once to the worker's own
    assert g0.device == "fake:1" and inode(g0) != inode(t0)
    np.testing.assert_array_equal(g0.array(), src)
    # its own device: the same memory
    assert g1.device == "fake:1" and inode(g1) == inode(t1)
    assert g1._mem is t1._mem


def test_cpu_handle_naming_fake_memory_is_malformed(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    a, b = channels
    t = nb.tensor(np.zeros(100), device="fake:0")
    token = a.next_token()
    a.send(b.address, token, [t._mem.fd])  # type: ignore[union-attr]
    dec = Decoder()
    dec.claim = functools.partial(b.claim, os.getpid())
    with pytest.raises(WireError, match="fake:0"):
        dec.decode(raw([tag(17), "f64", [100], token, 0, 0]))


def test_handle_naming_a_segment_as_another_device_is_malformed(
    channels: tuple[FdChannel, FdChannel],
) -> None:
    a, b = channels
    t = nb.tensor(np.zeros(100), device="fake:0")
    token = a.next_token()
    a.send(b.address, token, [t._mem.fd])  # type: ignore[union-attr]
    dec = Decoder()
    dec.claim = functools.partial(b.claim, os.getpid())
    with pytest.raises(WireError, match="as fake:1"):
        dec.decode(raw([tag(20), "f64", [100], token, 0, 0, "fake:1"]))


BAD_NAMES = [None, 0, b"fake:0", "cpu", "gpu:0", "fake:01", "fake:-1", "fake:99999", "cuda:", ""]


@pytest.mark.parametrize("device", BAD_NAMES)
def test_malformed_device_names_on_the_wire(device: Any) -> None:
    payloads = [
        [tag(18), "u8", [2], b"ab", device],
        [tag(19), "u8", [2], 0, device],
        [tag(20), "u8", [2], 1, 0, 0, device],
        [tag(21), "u8", [2], device, 1, 0, []],
    ]
    for p in payloads:
        dec = Decoder()
        dec.claim = lambda seq: None
        with pytest.raises(WireError):
            dec.decode(raw(p), [b"ab"])


def test_device_kinds_must_match_the_tag() -> None:
    with pytest.raises(WireError, match="fake"):
        Decoder().decode(raw([tag(20), "u8", [2], 1, 0, 0, "cuda:0"]))
    with pytest.raises(WireError, match="cuda"):
        Decoder().decode(raw([tag(21), "u8", [2], "fake:0", 1, 0, []]))


def test_cuda_handle_without_cuda_is_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "cuda_count", lambda: 0)
    with pytest.raises(WireError, match="cannot open"):
        Decoder().decode(raw([tag(21), "u8", [2], "cuda:0", None, 0, ["ipc", b"x" * 64]]))


@pytest.mark.parametrize(
    "payload",
    [
        [tag(18), "u8", [3], b"ab", "fake:0"],  # too few bytes
        [tag(18), "x9", [2], b"ab", "fake:0"],
        [tag(18), "u8", [2], "ab", "fake:0"],
        [tag(18), "u8", [2], b"ab"],  # no device
        [tag(19), "u8", [2], 5, "fake:0"],  # no such frame
        [tag(20), "u8", [2], 1, 0, 0, "fake:0"],  # nothing was passed
    ],
)
def test_malformed_device_payloads(payload: list[Any]) -> None:
    dec = Decoder()
    dec.claim = lambda seq: None
    with pytest.raises(WireError):
        dec.decode(raw(payload), [b"ab"])
