"""The wire codec: what crosses a node boundary comes back exactly; bad bytes only WireError."""

from __future__ import annotations

import datetime
import enum
import math
import random
import traceback
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from msgpack import ExtType
from numbeam.actors._types import Down, Exit, NodeDown, Pid, Ref, RemoteError, TimerRef
from numbeam.transport._wire import Decoder, Encoder, WireError

PID = Pid("a@127.0.0.1:9100", 42, 3)
REF = Ref("a@127.0.0.1:9100", 7)


def tag(code: int) -> ExtType:
    return ExtType(code, b"")


def raw(obj: Any) -> bytes:
    """Hand-made wire bytes (for malformed input): plain msgpack with our tags in it."""
    return msgpack.packb(obj, use_bin_type=True)


def assert_same(got: Any, want: Any) -> None:
    """Equal and of exactly the same type, all the way down."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert not got.flags.writeable
        if want.dtype.kind in "fc":
            np.testing.assert_array_equal(got, want)
        else:
            assert (got == want).all()
    elif isinstance(want, float | np.floating) and math.isnan(want):
        assert math.isnan(got)
    elif isinstance(want, list | tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
            assert_same(next(k for k in got if k == key), key)
    elif isinstance(want, Down | Exit | NodeDown):
        for field in want.__slots__:
            assert_same(getattr(got, field), getattr(want, field))
    elif isinstance(want, RemoteError):
        assert (got.type_name, got.message, got.traceback) == (
            want.type_name,
            want.message,
            want.traceback,
        )
    else:
        assert got == want


def round_trip(obj: Any, oob_threshold: int = 65536) -> tuple[Any, list[Any]]:
    frames: list[Any] = []
    data = Encoder(oob_threshold).encode(obj, frames)
    return Decoder().decode(data, frames), frames


VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    -0.0,
    math.inf,
    math.nan,
    "",
    "héllo ✓",
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    (),
    (1,),
    ("ping", 123),
    ((1, 2), [(3,), ()], ((),)),
    {},
    {"a": 1.0, "b": 2.0},
    {(1, 2): "tuple", 1: "int", None: 0, b"k": 1, frozenset({1}): 2, PID: 3, 2.5: (4,)},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({1, (2, 3), frozenset({4})}),
    complex(1, -2),
    1j,
    PID,
    REF,
    TimerRef("b@h:1", 9),
    Down(REF, PID, ("shutdown", "x")),
    Down(REF, ("name", "b@h:1"), "noproc"),
    Exit(PID, "killed"),
    NodeDown("b@h:1", "connection_closed"),
    RemoteError("ValueError", "boom", "Traceback...\nValueError: boom\n"),
    np.float32(1.5),
    np.float64(2.5),
    np.float16(0.5),
    np.int8(-3),
    np.uint64(2**64 - 1),
    np.bool_(True),
    np.complex64(1 + 2j),
    np.datetime64("2024-01-02T03:04:05", "ns"),
    np.timedelta64(5, "s"),
    np.str_("abc"),
    np.bytes_(b"ab"),
    (PID, REF, "x"),
    {"pids": [PID, PID], "reason": Exit(PID, {"k": (1, 2.0)})},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_round_trips_with_its_type(value: Any) -> None:
    got, frames = round_trip(value)
    assert_same(got, value)
    assert frames == []


def test_wire_format_is_the_documented_one() -> None:
    # [tag 1 (tuple), "ping", 1] and [tag 5 (Pid), node, id, creation]: see the module doc.
    assert Encoder().encode(("ping", 1), []) == b"\x93\xc7\x00\x01\xa4ping\x01"
    assert Encoder().encode(Pid("n", 2, 3), []) == b"\x94\xc7\x00\x05\xa1n\x02\x03"
    assert Encoder().encode([1.5, None], []) == raw([1.5, None])


def test_msgpack_timestamp_ext_decodes_as_nanoseconds() -> None:
    # msgpack handles ext -1 itself; documented in the module's wire spec.
    assert Decoder().decode(b"\xd6\xff\x00\x00\x00\x01") == 1_000_000_000


def test_bytearray_and_memoryview_arrive_as_bytes() -> None:
    got, _ = round_trip([bytearray(b"ab"), memoryview(b"cd")])
    assert_same(got, [b"ab", b"cd"])


def test_int_str_float_subclasses_cross_as_their_plain_value() -> None:
    class Color(enum.IntEnum):
        RED = 3

    class Name(str):
        def __str__(self) -> str:
            return "not this"

    class Meters(float):
        pass

    got, _ = round_trip((Color.RED, Name("bob"), Meters(2.5), True))
    assert_same(got, (3, "bob", 2.5, True))


def test_container_subclasses_cross_as_their_base() -> None:
    class Point(tuple[int, int]):
        pass

    from collections import OrderedDict

    got, _ = round_trip([Point((1, 2)), OrderedDict(a=1)])
    assert_same(got, [(1, 2), {"a": 1}])


def test_timer_ref_comes_back_as_timer_ref() -> None:
    got, _ = round_trip([TimerRef("n@h:1", 5), Ref("n@h:1", 5)])
    assert type(got[0]) is TimerRef and type(got[1]) is Ref


def test_exception_becomes_remote_error_with_type_message_and_traceback() -> None:
    def fail() -> None:
        raise KeyError("missing")

    try:
        fail()
    except KeyError as exc:
        error = exc
    got, _ = round_trip(("EXIT", error))
    remote = got[1]
    assert type(remote) is RemoteError
    assert remote.type_name == "KeyError"
    assert remote.message == "'missing'"
    assert remote.traceback == "".join(traceback.format_exception(error))
    assert "in fail" in remote.traceback


def test_user_exception_type_name_is_module_and_qualname() -> None:
    class Broken(Exception):
        pass

    got, _ = round_trip(Broken("bad"))
    assert (
        got.type_name
        == f"{__name__}.test_user_exception_type_name_is_module_and_qualname.<locals>.Broken"
    )
    assert got.message == "bad"


def test_exception_whose_str_fails_still_crosses() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    got, _ = round_trip(Weird())
    assert type(got) is RemoteError and "unprintable" in got.message


def test_remote_error_reencodes_its_own_fields() -> None:
    first, _ = round_trip(RemoteError("pkg.Err", "msg", "tb text"))
    again, _ = round_trip(first)
    assert (again.type_name, again.message, again.traceback) == ("pkg.Err", "msg", "tb text")


def test_intern_pid_supplies_the_pid_objects() -> None:
    cached = Pid("a@127.0.0.1:9100", 42, 3)
    seen = []

    def intern(node: str, id: int, creation: int) -> Pid:
        seen.append((node, id, creation))
        return cached

    data = Encoder().encode((PID, [PID]), [])
    got = Decoder(intern).decode(data)
    assert got[0] is cached and got[1][0] is cached
    assert seen == [("a@127.0.0.1:9100", 42, 3)] * 2


# ----------------------------------------------------------------------------- arrays

DTYPES = [
    "?",
    "i1",
    "u1",
    "<i2",
    ">i4",
    "<u8",
    ">f8",
    "<f2",
    "f4",
    "c8",
    ">c16",
    "M8[ns]",
    "m8[s]",
    "S5",
    "U3",
]
SHAPES = [(), (0,), (7,), (2, 3), (2, 0, 4), (3, 1, 2, 1)]


def sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    dt = np.dtype(dtype)
    if dt.kind in "SU":
        flat = np.array([f"v{i}"[: dt.itemsize // max(1, dt.alignment)] for i in range(size)])
    elif dt.kind in "mM":
        flat = np.arange(size).astype(dt.str[:1] + "i8").view(dt)
    else:
        flat = np.arange(size) % 2 if dt.kind == "b" else np.arange(size) - 2 * (dt.kind == "i")
    return np.asarray(flat).astype(dt).reshape(shape)


@pytest.mark.parametrize("oob", [False, True], ids=["inline", "frame"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_array_round_trips_with_dtype_and_shape(
    dtype: str, shape: tuple[int, ...], oob: bool
) -> None:
    arr = sample(dtype, shape)
    got, frames = round_trip(arr, oob_threshold=0 if oob else 1 << 30)
    assert_same(got, arr)
    assert len(frames) == (1 if oob else 0)


@pytest.mark.parametrize("oob", [False, True], ids=["inline", "frame"])
def test_non_contiguous_arrays_are_sent_contiguous(oob: bool) -> None:
    base = np.arange(24.0).reshape(4, 6)
    for arr in (base[:, ::2], base.T, base[::-1]):
        got, frames = round_trip(arr, oob_threshold=0 if oob else 1 << 30)
        assert_same(got, np.ascontiguousarray(arr))
        if oob:
            assert frames[0].flags.c_contiguous


def test_large_array_travels_as_the_frame_itself() -> None:
    arr = np.arange(100_000, dtype=np.float64)
    frames: list[Any] = ["header"]
    data = Encoder().encode({"x": arr, "small": np.ones(3)}, frames)
    assert len(frames) == 2 and frames[1] is arr
    assert len(data) < 200


def test_small_arrays_stay_inline_and_leave_frames_alone() -> None:
    frames: list[Any] = ["header"]
    arr = np.ones(8191)  # 65528 bytes, just under the default threshold
    data = Encoder().encode([arr, np.zeros((2, 2), np.int32)], frames)
    assert frames == ["header"]
    assert_same(Decoder().decode(data, frames), [arr, np.zeros((2, 2), np.int32)])


def test_threshold_is_inclusive() -> None:
    frames: list[Any] = []
    Encoder(oob_threshold=80).encode([np.ones(10), np.ones(9)], frames)
    assert len(frames) == 1 and frames[0].size == 10


def test_frame_array_is_a_read_only_view_of_the_received_bytes() -> None:
    arr = np.arange(20_000, dtype="<i4").reshape(100, 200)
    frames: list[Any] = []
    data = Encoder(oob_threshold=1024).encode(("data", arr), frames)
    received = [bytes(memoryview(f).cast("B")) for f in frames]  # what the socket hands over
    got = Decoder().decode(data, received)[1]
    assert_same(got, arr)
    assert np.shares_memory(got, np.frombuffer(received[0], np.uint8))
    assert not got.flags.writeable


def test_frame_array_from_zmq_frame_is_zero_copy_and_read_only() -> None:
    arr = np.arange(50_000, dtype=np.float32)
    frames: list[Any] = []
    data = Encoder().encode(arr, frames)
    frame = zmq.Frame(frames[0])  # a writable buffer, as a received frame is
    got = Decoder().decode(data, [frame])
    assert_same(got, arr)
    assert np.shares_memory(got, np.frombuffer(frame.buffer, np.uint8))
    assert not got.flags.writeable


def test_datetime_array_frame_is_a_byte_view() -> None:
    arr = np.arange(10_000).astype("M8[ms]")
    frames: list[Any] = []
    data = Encoder(oob_threshold=0).encode(arr, frames)
    assert np.shares_memory(frames[0], arr)
    zmq.Frame(frames[0])  # exports the buffer protocol, unlike the datetime array itself
    assert_same(Decoder().decode(data, frames), arr)


def test_inline_array_is_read_only() -> None:
    got, _ = round_trip(np.arange(5))
    assert not got.flags.writeable


# ----------------------------------------------------------------------------- encode errors


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (Opaque(), "Opaque"),
        (lambda: 1, "function"),
        (Opaque, "type"),
        (datetime.datetime(2024, 1, 1), "datetime.datetime"),
        (np.array([1, "a"], dtype=object), "dtype object"),
        (np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), "dtype"),
        (np.zeros(2, dtype=[("a", "i4")])[0], "numpy scalar"),
        (np.ma.masked_array([1, 2], mask=[False, True]), "masked"),
        ("bad \ud800 surrogate", "str"),
    ],
    ids=[
        "object",
        "function",
        "class",
        "datetime",
        "object-array",
        "structured",
        "void",
        "masked",
        "surrogate",
    ],
)
def test_unsendable_value_raises_type_error_naming_it(value: Any, name: str) -> None:
    with pytest.raises(TypeError, match="cannot send") as info:
        Encoder().encode(value, [])
    assert name in str(info.value)


def test_type_error_says_where_the_value_is() -> None:
    with pytest.raises(TypeError) as info:
        Encoder().encode(("reply", {"k": [1, {2, 3}, Opaque()]}), [])
    message = str(info.value)
    assert "test_wire.Opaque" in message and "[1]['k'][2]" in message


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_int_beyond_64_bits_raises_type_error(big: int) -> None:
    with pytest.raises(TypeError, match="64-bit"):
        Encoder().encode([1, (big,)], [])


def test_too_deep_nesting_raises_type_error() -> None:
    deep: Any = "leaf"
    for _ in range(2000):
        deep = [deep]
    with pytest.raises(TypeError, match="nested"):
        Encoder().encode(deep, [])
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(TypeError, match="nested"):
        Encoder().encode(loop, [])


def test_failed_encode_leaves_frames_and_encoder_intact() -> None:
    encoder = Encoder(oob_threshold=0)
    frames: list[Any] = ["header"]
    with pytest.raises(TypeError):
        encoder.encode([np.ones(4), Opaque()], frames)
    assert frames == ["header"]
    data = encoder.encode(("ok", 1), frames)
    assert Decoder().decode(data) == ("ok", 1)


# ----------------------------------------------------------------------------- malformed input

GOOD = Encoder().encode(("reply", PID, REF, [1.5, {"k": (2, b"x")}], np.arange(3)), [])


def test_every_truncation_is_a_wire_error() -> None:
    decoder = Decoder()
    for end in range(len(GOOD)):
        with pytest.raises(WireError):
            decoder.decode(GOOD[:end])
        with pytest.raises(WireError):
            decoder.decode_stream(GOOD + GOOD[:end] if end else GOOD[:0] + b"\xc1")


ARRAY_HEAD = [tag(13), "<f8", [2]]

MALFORMED = {
    "empty": b"",
    "trailing garbage": GOOD + b"\xc1",
    "reserved byte": b"\xc1",
    "unknown ext code": raw(ExtType(100, b"")),
    "ext code zero": raw([ExtType(0, b""), 1]),
    "ext code past the last": raw([ExtType(15, b""), 1]),
    "negative ext code": b"\xd4\xfb\x00",
    "tag with a payload": raw([ExtType(1, b"x"), 1]),
    "bare tag": raw(tag(1)),
    "tag not at the head": raw([1, tag(1)]),
    "tag as a map value": raw({"a": tag(5)}),
    "two tags": raw([tag(1), tag(1)]),
    "pid with two fields": raw([tag(5), "n", 1]),
    "pid with a str id": raw([tag(5), "n", "1", 2]),
    "ref with a float id": raw([tag(6), "n", 1.0]),
    "complex of ints": raw([tag(4), 1, 2]),
    "remote error of ints": raw([tag(11), 1, 2, 3]),
    "down with no fields": raw([tag(8)]),
    "unhashable set member": raw([tag(2), [1]]),
    "list as a map key": raw({"a": 1}).replace(b"\xa1a", b"\x91\x01"),
    "invalid utf-8": b"\xa2\xff\xfe",
    "array claiming 2**32-1 items": b"\xdd\xff\xff\xff\xff",
    "map claiming 2**32-1 pairs": b"\xdf\xff\xff\xff\xff",
    "bin claiming 4 GiB": b"\xc6\xff\xff\xff\xff",
    "deep nesting": b"\x91" * 5000 + b"\x01",
    "frame index out of range": raw([*ARRAY_HEAD, 2]),
    "negative frame index": raw([*ARRAY_HEAD, -1]),
    "frame index not an int": raw([*ARRAY_HEAD, "0"]),
    "frame of the wrong size": raw([*ARRAY_HEAD, 1]),
    "object dtype": raw([tag(12), "|O", [1], b"\x00" * 8]),
    "object dtype in a frame": raw([tag(13), "|O", [2], 1]),
    "structured dtype": raw([tag(12), "[('a', '<i4')]", [1], b"\x00" * 4]),
    "void dtype": raw([tag(12), "|V8", [1], b"\x00" * 8]),
    "non-canonical dtype": raw([tag(12), "float64", [1], b"\x00" * 8]),
    "dtype not a str": raw([tag(12), 8, [1], b"\x00" * 8]),
    "zero-size dtype": raw([tag(12), "|S0", [1], b""]),
    "inline data too short": raw([tag(12), "<f8", [2], b"\x00" * 8]),
    "inline data a str": raw([tag(12), "|u1", [2], "ab"]),
    "negative dimension": raw([tag(12), "|u1", [-1], b""]),
    "shape a tuple": raw([tag(12), "|u1", [tag(1), 2], b"ab"]),
    "huge shape": raw([tag(12), "<f8", [2**40, 2**40], b""]),
    "too many dimensions": raw([tag(12), "|u1", [1] * 65, b"\x00"]),
    "scalar data wrong size": raw([tag(14), "<f4", b"\x00" * 8]),
    "str array past U+10FFFF": raw([tag(12), "<U1", [2], b"a\x00\x00\x00\xff\xff\xff\xff"]),
    "str scalar past U+10FFFF": raw([tag(14), ">U1", b"\x00\x11\x00\x00"]),
    "bool array byte 2": raw([tag(13), "|b1", [8], 1]),
    "bool scalar byte 2": raw([tag(14), "|b1", b"\x02"]),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_input_raises_wire_error(data: bytes) -> None:
    frames = [b"\x00" * 16, b"\x00\x01\x00\x00\x00\x00\x00\x02"]
    with pytest.raises(WireError):
        Decoder().decode(data, frames)
    with pytest.raises(WireError):
        Decoder().decode_stream(GOOD + data + GOOD if data else b"\xc1", frames)


def test_decode_refuses_a_second_message() -> None:
    with pytest.raises(WireError):
        Decoder().decode(GOOD + GOOD)


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_decoder_recovers_after_malformed_input() -> None:
    decoder = Decoder()
    with pytest.raises(WireError):
        decoder.decode(raw({"a": tag(1)}))
    assert decoder.decode(GOOD)[1] == PID


# ----------------------------------------------------------------------------- batches


def test_stream_decodes_a_batch_in_order() -> None:
    encoder = Encoder(oob_threshold=100)
    frames: list[Any] = []
    messages = [("a", 1), PID, np.arange(50.0), {"b": (2,)}, np.arange(10), None]
    data = b"".join(encoder.encode(m, frames) for m in messages)
    assert len(frames) == 1
    got = Decoder().decode_stream(data, frames)
    assert_same(got, [*messages[:2], np.arange(50.0), *messages[3:]])
    assert Decoder().decode_stream(memoryview(data), frames)[0] == ("a", 1)


def test_empty_stream_is_an_empty_batch() -> None:
    assert Decoder().decode_stream(b"") == []


# ----------------------------------------------------------------------------- fuzz


def test_fuzzed_input_only_ever_raises_wire_error() -> None:
    rng = random.Random(20240615)
    encoder = Encoder(oob_threshold=64)
    corpus: list[tuple[bytes, list[Any]]] = []
    for value in [*VALUES[:-3], GOOD, (PID, np.arange(20.0)), [np.ones((2, 3), ">i2")] * 2]:
        frames: list[Any] = []
        corpus.append(
            (encoder.encode(value, frames), [bytes(memoryview(f).cast("B")) for f in frames])
        )
    decoder = Decoder()
    outcomes = {"ok": 0, "error": 0}

    def attempt(data: bytes, frames: list[Any]) -> None:
        for decode in (decoder.decode, decoder.decode_stream):
            try:
                decode(data, frames)
                outcomes["ok"] += 1
            except WireError:
                outcomes["error"] += 1

    for _ in range(1500):
        attempt(rng.randbytes(rng.randrange(1, 40)), [])
    for _ in range(3000):
        data, frames = rng.choice(corpus)
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(4)
            if op == 0 and buf:  # flip a bit
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:  # overwrite a byte (often with a type marker)
                buf[rng.randrange(len(buf))] = rng.choice(
                    [0xC1, 0xD4, 0xDD, 0x91, 0xFF, 0x7F, 0x0F]
                )
            elif op == 2:  # truncate
                del buf[rng.randrange(len(buf) + 1) :]
            else:  # splice in a piece of another encoding
                other = rng.choice(corpus)[0]
                start = rng.randrange(len(other))
                at = rng.randrange(len(buf) + 1)
                buf[at:at] = other[start : start + rng.randrange(1, 12)]
        attempt(bytes(buf), frames)
    assert outcomes["error"] > 1000 and outcomes["ok"] > 100  # the mutations reach both paths
