"""The wire codec: what a message looks like between two nodes (msgpack, never pickle).

Plain msgpack carries None, bool, int (64-bit), float, str, bytes, lists and dicts as they are.
Every other kind that may cross is an array whose first element is a *tag*: an ext value with
an empty payload whose code says what the rest of the array is. The wire spec::

    code  kind             array after the tag
    1     tuple            *items
    2     set              *items
    3     frozenset        *items
    4     complex          real: float, imag: float
    5     Pid              node: str, id: int, creation: int
    6     Ref              node: str, id: int
    7     TimerRef         node: str, id: int
    8     Down             ref, pid, reason
    9     Exit             pid, reason
    10    NodeDown         name, reason
    11    RemoteError      type_name: str, message: str, traceback: str   (any exception)
    12    array, inline    dtype: str, shape: [int], data: bin
    13    array, frame     dtype: str, shape: [int], frame: int
    14    numpy scalar     dtype: str, data: bin
    15    tensor, inline   dtype: Nx name, shape: [int], data: bin
    16    tensor, frame    dtype: Nx name, shape: [int], frame: int
    17    tensor, handle   dtype: Nx name, shape: [int], token: int, segment: int, offset: int
    18    device tensor, inline   dtype, shape, data: bin, device: str
    19    device tensor, frame    dtype, shape, frame: int, device: str
    20    fake tensor, handle     dtype, shape, token: int, segment: int, offset: int, device: str
    21    CUDA tensor, handle     dtype, shape, device: str, token: int, offset: int, handle: list
          handle, a pool's buffer: ["pool", descriptor: int, export_data: bin(64), owner: str,
                                    id: int, size: int]
          handle, legacy CUDA IPC: ["ipc", ipc_handle: bin(64), owner: str, id: int, size: int]

``dtype`` is numpy's canonical ``dtype.str`` (``"<f8"``, ``"|b1"``, ``"<M8[ns]"``, ``"<U5"``).
An array of ``oob_threshold`` bytes or more travels out of band: its buffer is the frame at
index ``frame`` of the frames that follow the message, sent and received without a copy.
A tensor handle names a shared-memory segment passed ahead of the message as a file
descriptor (see `numbeam.tensors._share`): ``segment`` indexes the descriptors passed with
``token``. Only nodes on one host exchange handles; the encoder writes them when the node sets
`Encoder.handle_seq` (a token per batch), and the decoder maps them through `Decoder.claim`.
Received tensors of the other two kinds are copied into the receiver's shared memory.

Device tensors (18..21) carry the device's name (``"fake:N"`` or ``"cuda:N"``, checked: any
other value is malformed). To a node on the host a fake device's buffer crosses as 17 does (its
segment's descriptor, plus the name); a CUDA buffer as a handle made and opened by
`numbeam.gpu._cuda` (``token`` is the batch's, or None): of a buffer in its owner's
stream-ordered memory pool, the pool's descriptor goes ahead of the batch like a segment's
(``descriptor`` indexes those passed with ``token``; once per pool per batch) and
``export_data`` is the buffer's ``CUmemPoolPtrExportData``; of a ``cudaMalloc`` buffer, the
legacy ``cudaIpcGetMemHandle`` (the owner picks per device; ``NUMBEAM_CUDA_IPC``). ``owner``,
``id`` and ``size`` name the buffer for the owner's ledger; a handle of any other shape, a
descriptor that did not arrive, or one CUDA cannot open is malformed. Without handles they are
staged through host bytes (18, 19) and land in the receiver's memory for that device: a fake
device always; a CUDA device only if the receiver has it, else ``cpu`` (with a warning, once).
A receiver that is a device worker (`numbeam.gpu._devices.current` is not ``"cpu"``) puts a
received device tensor of another device on its own device (one copy; for CUDA a peer copy);
one of its own device stays the same memory. ``cpu`` tensors stay ``cpu`` tensors.
Codes 0 and 22..127 are unused, and any ext but an empty tag is malformed input, except -1:
msgpack decodes its own timestamp ext without asking, so a peer that sends one delivers an int
of nanoseconds. (For the same reason ``msgpack.ExtType`` and ``msgpack.Timestamp`` values are
packed as they are, unchecked: they are not part of any message.)

Why tags and not ext payloads: an ext payload is opaque bytes, so a tuple of tuples would need a
nested pack per level on one side and a nested unpack on the other, and msgpack's Packer is not
reentrant. With a tag, a whole message is one C-level pack and one unpack, and each tagged value
costs one Python call when encoding (the ``default`` hook) and two when decoding (``ext_hook``
returns the tag, ``list_hook`` builds the value from its array). The decoder counts the tags it
hands out and takes back: a tag anywhere but at the head of an array is rejected.

The decoder is the boundary with untrusted peers: whatever the bytes, it returns values of the
kinds above or raises `WireError`, and never allocates more than the input can describe.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from msgpack import ExtType, Packer, Unpacker, unpackb
from numbeam.actors._types import Down, Exit, NodeDown, Pid, Ref, RemoteError, TimerRef
from numbeam.gpu._devices import cuda_count, parse_device
from numbeam.gpu._devices import current as current_device
from numbeam.tensors._dtypes import DTYPES, dtype_name
from numbeam.tensors._memory import Segment, settings
from numbeam.tensors._share import MAX_FDS
from numbeam.tensors._tensor import Tensor, _backend, _host_bytes, _make, tensor

__all__ = ["Decoder", "Encoder", "WireError"]

log = logging.getLogger("numbeam")


class WireError(ValueError):
    """Raised when bytes received from a peer are not a well-formed message."""


# ----------------------------------------------------------------------------- tags

_TUPLE = 1
_SET = 2
_FROZENSET = 3
_COMPLEX = 4
_PID = 5
_REF = 6
_TIMER_REF = 7
_DOWN = 8
_EXIT = 9
_NODE_DOWN = 10
_REMOTE_ERROR = 11
_ARRAY = 12
_ARRAY_FRAME = 13
_NP_SCALAR = 14
_TENSOR = 15
_TENSOR_FRAME = 16
_TENSOR_HANDLE = 17
_DEV_TENSOR = 18
_DEV_TENSOR_FRAME = 19
_FAKE_HANDLE = 20
_CUDA_HANDLE = 21
_N_CODES = 22

# What the encoder writes at the head of a tagged array.
_T_TUPLE = ExtType(_TUPLE, b"")
_T_SET = ExtType(_SET, b"")
_T_FROZENSET = ExtType(_FROZENSET, b"")
_T_COMPLEX = ExtType(_COMPLEX, b"")
_T_PID = ExtType(_PID, b"")
_T_REF = ExtType(_REF, b"")
_T_TIMER_REF = ExtType(_TIMER_REF, b"")
_T_DOWN = ExtType(_DOWN, b"")
_T_EXIT = ExtType(_EXIT, b"")
_T_NODE_DOWN = ExtType(_NODE_DOWN, b"")
_T_REMOTE_ERROR = ExtType(_REMOTE_ERROR, b"")
_T_ARRAY = ExtType(_ARRAY, b"")
_T_ARRAY_FRAME = ExtType(_ARRAY_FRAME, b"")
_T_NP_SCALAR = ExtType(_NP_SCALAR, b"")
_T_TENSOR = ExtType(_TENSOR, b"")
_T_TENSOR_FRAME = ExtType(_TENSOR_FRAME, b"")
_T_TENSOR_HANDLE = ExtType(_TENSOR_HANDLE, b"")
_T_DEV_TENSOR = ExtType(_DEV_TENSOR, b"")
_T_DEV_TENSOR_FRAME = ExtType(_DEV_TENSOR_FRAME, b"")
_T_FAKE_HANDLE = ExtType(_FAKE_HANDLE, b"")
_T_CUDA_HANDLE = ExtType(_CUDA_HANDLE, b"")

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# msgpack's own limit on nesting, for the error message (the packer enforces it).
_MAX_DEPTH = 1024
# numpy kinds that cross: bool, ints, floats, complex, datetime/timedelta, bytes, str.
_ARRAY_KINDS = frozenset("biufcmMSU")
# Canonical dtype strings of those kinds; checked before numpy parses a peer's string.
_DTYPE_RE = re.compile(r"[<>|][biufcmMSU][0-9]{1,9}(?:\[[0-9]{0,9}[a-zA-Z]{1,2}\])?")
_MAX_DTYPE_CACHE = 256
_MAX_ENCODER_CACHE = 512
# The end of every TypeError that encode raises.
_ONLY = (
    "only None, bool, int (64-bit), float, complex, str, bytes, list, tuple, dict, set, "
    "frozenset, numpy arrays and scalars of numeric, bool, datetime, bytes or str dtype, "
    "numbeam tensors, Pid, Ref, Down, Exit, NodeDown and exceptions cross nodes"
)


class _Unsendable(TypeError):
    """Raised inside the packer's hook; `Encoder.encode` turns it into the public TypeError."""

    def __init__(self, value: Any, what: str) -> None:
        super().__init__(what)
        self.value = value
        self.what = what


def _type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# ----------------------------------------------------------------------------- encoding


def _enc_int(enc: Encoder, obj: int) -> Any:
    # The packer hands an exact int to the hook only when it does not fit in 64 bits; an int
    # subclass (IntEnum, IntFlag) crosses as its plain value.
    value = int.__int__(obj)
    if _INT_MIN <= value <= _INT_MAX:
        return value
    raise _Unsendable(obj, "an int outside the 64-bit range")


def _enc_float(enc: Encoder, obj: float) -> Any:
    return float.__float__(obj)


def _enc_str(enc: Encoder, obj: str) -> Any:
    return str.__str__(obj)


def _enc_bytes(enc: Encoder, obj: Any) -> Any:
    return bytes(obj)


def _enc_list(enc: Encoder, obj: list[Any]) -> Any:
    return list(obj)


def _enc_dict(enc: Encoder, obj: dict[Any, Any]) -> Any:
    return dict(obj)


def _enc_tuple(enc: Encoder, obj: tuple[Any, ...]) -> Any:
    return [_T_TUPLE, *obj]


def _enc_set(enc: Encoder, obj: set[Any]) -> Any:
    return [_T_SET, *obj]


def _enc_frozenset(enc: Encoder, obj: frozenset[Any]) -> Any:
    return [_T_FROZENSET, *obj]


def _enc_complex(enc: Encoder, obj: complex) -> Any:
    return [_T_COMPLEX, obj.real, obj.imag]


def _enc_pid(enc: Encoder, obj: Pid) -> Any:
    return [_T_PID, obj.node, obj.id, obj.creation]


def _enc_ref(enc: Encoder, obj: Ref) -> Any:
    return [_T_REF, obj.node, obj.id]


def _enc_timer_ref(enc: Encoder, obj: TimerRef) -> Any:
    return [_T_TIMER_REF, obj.node, obj.id]


def _enc_down(enc: Encoder, obj: Down) -> Any:
    return [_T_DOWN, obj.ref, obj.pid, obj.reason]


def _enc_exit(enc: Encoder, obj: Exit) -> Any:
    return [_T_EXIT, obj.pid, obj.reason]


def _enc_node_down(enc: Encoder, obj: NodeDown) -> Any:
    return [_T_NODE_DOWN, obj.name, obj.reason]


def _enc_remote_error(enc: Encoder, obj: RemoteError) -> Any:
    return [_T_REMOTE_ERROR, obj.type_name, obj.message, obj.traceback]


def _enc_exception(enc: Encoder, obj: BaseException) -> Any:
    # An exception's own code (__str__, a traceback line's repr) may fail; the message must not.
    type_name = _type_name(type(obj))
    try:
        message = str(obj)
    except Exception:
        message = f"<unprintable {type_name}>"
    try:
        tb = "".join(traceback.format_exception(obj))
    except Exception:
        tb = ""
    return [_T_REMOTE_ERROR, type_name, message, tb]


def _enc_array(enc: Encoder, obj: np.ndarray) -> Any:
    dt = obj.dtype
    if dt.kind not in _ARRAY_KINDS:
        raise _Unsendable(obj, f"a numpy array of dtype {dt}")
    if type(obj) is not np.ndarray:
        if isinstance(obj, np.ma.MaskedArray):
            raise _Unsendable(obj, "a numpy masked array (its mask would be lost)")
        obj = obj.view(np.ndarray)
    if not obj.flags.c_contiguous:
        obj = obj.copy()
    if obj.nbytes >= enc._oob_threshold:
        frames = enc._frames
        index = len(frames)
        # datetime arrays do not export the buffer protocol; their bytes do.
        frames.append(obj.reshape(-1).view(np.uint8) if dt.kind in "mM" else obj)
        return [_T_ARRAY_FRAME, dt.str, list(obj.shape), index]
    return [_T_ARRAY, dt.str, list(obj.shape), obj.tobytes()]


def _enc_np_scalar(enc: Encoder, obj: np.generic) -> Any:
    dt = obj.dtype
    if dt.kind not in _ARRAY_KINDS:
        raise _Unsendable(obj, f"a numpy scalar of dtype {dt}")
    return [_T_NP_SCALAR, dt.str, obj.tobytes()]


def _enc_tensor(enc: Encoder, t: Tensor) -> Any:
    mem = t._mem
    name = dtype_name(t._dt)
    shape = list(t._shape)
    if mem.__class__ is bytes:
        return [_T_TENSOR, name, shape, mem]
    device = mem.device  # type: ignore[union-attr]
    if device != "cpu":
        return _enc_device_tensor(enc, t, name, shape, device)
    seq = enc.handle_seq
    if seq is not None:
        i = _add_fd(enc, mem.fd, mem)  # type: ignore[union-attr]
        if i is not None:
            chunk = t._chunk
            if chunk is not None:
                chunk.shipped.add(t._tok[0])  # type: ignore[index]  # read elsewhere: never reuse
            return [_T_TENSOR_HANDLE, name, shape, seq, i, t._off]
    enc.shared_bytes = True  # a handle would have spared these bytes
    if t._nbytes >= enc._oob_threshold:
        frames = enc._frames
        index = len(frames)
        frames.append(t.numpy().reshape(-1).view(np.uint8))  # keeps the tensor alive
        return [_T_TENSOR_FRAME, name, shape, index]
    return [_T_TENSOR, name, shape, t.numpy().tobytes()]


def _add_fd(enc: Encoder, fd: int, keep: Any) -> int | None:
    """The index of descriptor ``fd`` among those passed with this batch (added once; ``keep``
    keeps it open until it is passed); None when the batch has as many as one datagram takes."""
    fds = enc.fds
    i = enc.fd_at.get(fd)
    if i is None and len(fds) < MAX_FDS:
        i = enc.fd_at[fd] = len(fds)
        fds.append(fd)
        if enc.segments is not None:
            enc.segments.append(keep)  # the descriptor must stay open until it is passed
    return i


def _enc_device_tensor(enc: Encoder, t: Tensor, name: str, shape: list[int], device: str) -> Any:
    mem: Any = t._mem
    seq = enc.handle_seq
    if seq is not None:
        if mem.__class__ is Segment:  # a fake device's segment: as a cpu handle, plus the name
            i = _add_fd(enc, mem.fd, mem)
            if i is not None:
                mem.mark_exported()
                return [_T_FAKE_HANDLE, name, shape, seq, i, t._off, device]
        else:
            handle = _backend(device).export(mem, enc.peer, lambda fd, keep: _add_fd(enc, fd, keep))
            if handle is not None:
                return [_T_CUDA_HANDLE, name, shape, device, seq, t._off, handle]
    enc.shared_bytes = True  # a handle would have spared these bytes
    host = _host_bytes(t)  # a view of a fake device's memory, a copy of a GPU's
    if t._nbytes >= enc._oob_threshold:
        frames = enc._frames
        index = len(frames)
        frames.append(host.reshape(-1).view(np.uint8))  # (a view keeps the tensor alive)
        return [_T_DEV_TENSOR_FRAME, name, shape, index, device]
    return [_T_DEV_TENSOR, name, shape, host.tobytes(), device]


_EncodeFn = Callable[["Encoder", Any], Any]

# Exact types the packer leaves to the hook (strict_types sends every subclass there too).
_ENCODERS: dict[type, _EncodeFn] = {
    int: _enc_int,
    tuple: _enc_tuple,
    set: _enc_set,
    frozenset: _enc_frozenset,
    complex: _enc_complex,
    Pid: _enc_pid,
    Ref: _enc_ref,
    TimerRef: _enc_timer_ref,
    Down: _enc_down,
    Exit: _enc_exit,
    NodeDown: _enc_node_down,
    RemoteError: _enc_remote_error,
    np.ndarray: _enc_array,
    Tensor: _enc_tensor,
}

# For subclasses, first match wins: numpy scalars before the builtins they derive from
# (np.float64 is a float, np.str_ a str), RemoteError before other exceptions.
_SUBCLASS_ENCODERS: tuple[tuple[type, _EncodeFn], ...] = (
    (np.generic, _enc_np_scalar),
    (np.ndarray, _enc_array),
    (RemoteError, _enc_remote_error),
    (BaseException, _enc_exception),
    (TimerRef, _enc_timer_ref),
    (Ref, _enc_ref),
    (int, _enc_int),
    (float, _enc_float),
    (complex, _enc_complex),
    (str, _enc_str),
    (bytes, _enc_bytes),
    (bytearray, _enc_bytes),
    (tuple, _enc_tuple),
    (list, _enc_list),
    (dict, _enc_dict),
    (frozenset, _enc_frozenset),
    (set, _enc_set),
)


class Encoder:
    """Turns a message into msgpack bytes plus the out-of-band frames of its large arrays.

    One Packer is reused for every message: keep one Encoder per thread (it is not reentrant).
    """

    __slots__ = (
        "_encoders",
        "_frames",
        "_oob_threshold",
        "_pack",
        "fd_at",
        "fds",
        "handle_seq",
        "peer",
        "segments",
        "shared_bytes",
    )

    def __init__(self, oob_threshold: int = 65536) -> None:
        if type(oob_threshold) is not int or oob_threshold < 0:
            raise ValueError(f"oob_threshold must be an int >= 0, got {oob_threshold!r}")
        self._oob_threshold = oob_threshold
        self._encoders: dict[type, _EncodeFn] = dict(_ENCODERS)
        self._frames: list[Any] = []
        # Set by a node before encoding for a peer on its host: tensors in shared memory go
        # as handles naming token `handle_seq`; their segments' descriptors are added to
        # `fds` (once each: `fd_at` maps a descriptor to its index there).
        self.handle_seq: int | None = None
        self.fds: list[int] = []
        self.fd_at: dict[int, int] = {}
        # Where the node keeps those segments alive until their descriptors are passed (the
        # tensor may be gone by then); None between batches, so the encoder holds none.
        self.segments: list[Segment] | None = None
        # Set when a tensor in shared memory went as bytes, for want of `handle_seq`.
        self.shared_bytes = False
        # The name of the node the batch goes to, when the node says (set with
        # `handle_seq`): CUDA handles record it, so that the buffer stays alive for that node
        # until it releases it or goes down (see `numbeam.gpu._cuda`).
        self.peer: str | None = None
        packer = Packer(default=self._default, use_bin_type=True, strict_types=True)
        self._pack: Callable[[Any], bytes] = packer.pack

    def encode(self, obj: Any, frames: list[Any]) -> bytes:
        """Return ``obj`` packed; arrays of ``oob_threshold`` bytes or more go to ``frames``.

        Each such array is appended to ``frames`` (C-contiguous, not copied) and referenced by
        its index there, so the caller sends it as a separate frame with ``copy=False``.
        Raises TypeError naming the type (and where in ``obj`` it is) for a value that cannot
        cross; ``frames`` is then left as it was.
        """
        start = len(frames)
        self._frames = frames
        try:
            if obj.__class__ is tuple:  # most messages: spare the packer a call into the hook
                return self._pack([_T_TUPLE, *obj])
            if obj.__class__ is list and obj and obj[-1].__class__ is tuple:
                # A node's operation, its message (last) a tuple: the same spared call. The
                # list is put back as it was before anything else looks at it.
                last = obj[-1]
                obj[-1] = [_T_TUPLE, *last]
                try:
                    return self._pack(obj)
                finally:
                    obj[-1] = last
            return self._pack(obj)
        except (TypeError, ValueError, OverflowError, BufferError, RecursionError) as exc:
            del frames[start:]
            raise _explain(obj, exc) from None
        finally:
            self._frames = _NO_FRAMES

    def _default(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is tuple:
            return [_T_TUPLE, *obj]
        if cls is Pid:
            return [_T_PID, obj.node, obj.id, obj.creation]
        if cls is Ref:
            return [_T_REF, obj.node, obj.id]
        fn = self._encoders.get(cls)
        if fn is None:
            fn = self._resolve(cls, obj)
        return fn(self, obj)

    def _resolve(self, cls: type, obj: Any) -> _EncodeFn:
        for base, fn in _SUBCLASS_ENCODERS:
            if issubclass(cls, base):
                if len(self._encoders) < _MAX_ENCODER_CACHE:
                    self._encoders[cls] = fn
                return fn
        raise _Unsendable(obj, f"a value of type {_type_name(cls)!r}")


_NO_FRAMES: list[Any] = []


# ----------------------------------------------------------------------------- errors at encode


def _explain(obj: Any, exc: BaseException) -> TypeError:
    """The TypeError for a failed encode: what could not cross, and where in the message."""
    if isinstance(exc, _Unsendable):
        culprit, what = exc.value, exc.what
    else:
        culprit, what = _NOTHING, f"this value ({type(exc).__name__}: {exc})"
    found = _find_unsendable(obj, culprit, what)
    if found is None:
        return TypeError(f"cannot send {what}: {_ONLY}")
    what, path = found
    where = f" at {path}" if path else ""
    return TypeError(f"cannot send {what}{where}: {_ONLY}")


_NOTHING = object()


def _find_unsendable(obj: Any, culprit: Any, what: str) -> tuple[str, str] | None:
    """Walk ``obj`` the way the packer does; return (what, path) of the first bad value.

    Only runs after an encode failed, so it may be slow; it is iterative so that a
    structure nested too deeply (or containing itself) is reported, not recursed into.
    """
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > _MAX_DEPTH:
            if len(path) > 60:
                path = path[:60] + "..."
            return f"a structure nested more than {_MAX_DEPTH} levels deep", path
        children: list[tuple[Any, str]] = []
        problem = _problem(value, children)
        if problem is None and value is culprit:
            problem = what
        if problem is not None:
            return problem, path
        for child, step in reversed(children):
            stack.append((child, path + step, depth + 1))
    return None


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = "?"
    return text if len(text) <= 40 else text[:37] + "..."


def _problem(value: Any, children: list[tuple[Any, str]]) -> str | None:
    """Why ``value`` itself cannot cross (None if it can); appends its parts to ``children``."""
    if value is None or isinstance(value, (bool, float, complex, Pid, Ref, BaseException)):
        return None
    if isinstance(value, np.generic):
        kind = value.dtype.kind
        return None if kind in _ARRAY_KINDS else f"a numpy scalar of dtype {value.dtype}"
    if isinstance(value, int):
        if _INT_MIN <= int.__int__(value) <= _INT_MAX:
            return None
        return f"an int outside the 64-bit range ({_short_repr(value)})"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"a str that is not valid unicode ({_short_repr(value)})"
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, memoryview):
        return None if value.c_contiguous else "a non-contiguous memoryview"
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            return f"a numpy array of dtype {value.dtype}"
        if isinstance(value, np.ma.MaskedArray):
            return "a numpy masked array (its mask would be lost)"
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        children.extend((item, f"[{i}]") for i, item in enumerate(value))
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            children.append((key, f"<key {_short_repr(key)}>"))
            children.append((item, f"[{_short_repr(key)}]"))
        return None
    if isinstance(value, Down):
        children.extend([(value.ref, ".ref"), (value.pid, ".pid"), (value.reason, ".reason")])
        return None
    if isinstance(value, Exit):
        children.extend([(value.pid, ".pid"), (value.reason, ".reason")])
        return None
    if isinstance(value, NodeDown):
        children.extend([(value.name, ".name"), (value.reason, ".reason")])
        return None
    return f"a value of type {_type_name(type(value))!r}"


# ----------------------------------------------------------------------------- decoding


class _Tag:
    """What ``ext_hook`` returns for a tag; ``list_hook`` finds it at the head of the array."""

    __slots__ = ("build", "code")

    def __init__(self, code: int, build: Callable[[Decoder, list[Any]], Any]) -> None:
        self.code = code
        self.build = build

    def __repr__(self) -> str:
        return f"<wire tag {self.code}>"


def _malformed(what: str) -> WireError:
    return WireError(f"malformed message: {what}")


def _build_tuple(dec: Decoder, lst: list[Any]) -> Any:
    del lst[0]
    return tuple(lst)


def _build_set(dec: Decoder, lst: list[Any]) -> Any:
    del lst[0]
    return set(lst)


def _build_frozenset(dec: Decoder, lst: list[Any]) -> Any:
    del lst[0]
    return frozenset(lst)


def _build_complex(dec: Decoder, lst: list[Any]) -> Any:
    _, real, imag = lst
    if type(real) is not float or type(imag) is not float:
        raise _malformed("complex parts are not floats")
    return complex(real, imag)


def _build_pid(dec: Decoder, lst: list[Any]) -> Any:
    _, node, id_, creation = lst
    if type(node) is not str or type(id_) is not int or type(creation) is not int:
        raise _malformed("a pid is not (str, int, int)")
    return dec._intern_pid(node, id_, creation)


def _build_ref(dec: Decoder, lst: list[Any]) -> Any:
    _, node, id_ = lst
    if type(node) is not str or type(id_) is not int:
        raise _malformed("a ref is not (str, int)")
    return Ref(node, id_)


def _build_timer_ref(dec: Decoder, lst: list[Any]) -> Any:
    _, node, id_ = lst
    if type(node) is not str or type(id_) is not int:
        raise _malformed("a timer ref is not (str, int)")
    return TimerRef(node, id_)


def _build_down(dec: Decoder, lst: list[Any]) -> Any:
    _, ref, pid, reason = lst
    return Down(ref, pid, reason)


def _build_exit(dec: Decoder, lst: list[Any]) -> Any:
    _, pid, reason = lst
    return Exit(pid, reason)


def _build_node_down(dec: Decoder, lst: list[Any]) -> Any:
    _, name, reason = lst
    return NodeDown(name, reason)


def _build_remote_error(dec: Decoder, lst: list[Any]) -> Any:
    _, type_name, message, tb = lst
    if type(type_name) is not str or type(message) is not str or type(tb) is not str:
        raise _malformed("a remote error's fields are not str")
    return RemoteError(type_name, message, tb)


def _array_size(dt: np.dtype[Any], shape: Any) -> int:
    """Bytes that ``shape`` of ``dt`` takes, after checking the shape is a list of sizes."""
    if type(shape) is not list or len(shape) > 64:
        raise _malformed("an array shape is not a list of at most 64 sizes")
    size = dt.itemsize
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise _malformed("an array dimension is not an int >= 0")
        size *= dim
    return size


def _check_values(buf: Any, dt: np.dtype[Any]) -> None:
    """Refuse bytes that are not a value of ``dt``: numpy would build the array, then fail or
    misbehave when it is used (a code point past U+10FFFF, a bool byte other than 0 or 1)."""
    if dt.kind == "U":
        codes = np.frombuffer(buf, dt.byteorder + "u4")
        if codes.size and codes.max() > 0x10FFFF:
            raise _malformed("a str array holds a code point past U+10FFFF")
    elif dt.kind == "b":
        flags = np.frombuffer(buf, np.uint8)
        if flags.size and flags.max() > 1:
            raise _malformed("a bool array holds a byte other than 0 or 1")


def _build_array(dec: Decoder, lst: list[Any]) -> Any:
    _, dtype, shape, data = lst
    dt = dec._dtype(dtype)
    if type(data) is not bytes or len(data) != _array_size(dt, shape):
        raise _malformed("an array's data does not match its dtype and shape")
    if dt.kind in "Ub":
        _check_values(data, dt)
    # A view of the bytes msgpack made: read-only already, no second copy.
    return np.frombuffer(data, dt).reshape(shape)


def _frame(dec: Decoder, index: Any, size: int, what: str) -> memoryview:
    """The out-of-band frame ``index`` of the message, checked to hold ``size`` bytes."""
    frames = dec._frames
    if type(index) is not int or not 0 <= index < len(frames):
        raise _malformed(f"{what} refers to frame {index!r} of {len(frames)}")
    buf = memoryview(frames[index])  # bytes, memoryview, zmq.Frame, numpy array...
    if buf.nbytes != size:
        raise _malformed(f"frame {index} has {buf.nbytes} bytes, {what} needs {size}")
    return buf


def _build_array_frame(dec: Decoder, lst: list[Any]) -> Any:
    _, dtype, shape, index = lst
    dt = dec._dtype(dtype)
    size = _array_size(dt, shape)
    buf = _frame(dec, index, size, "an array")
    if buf.ndim != 1 or buf.format != "B":
        buf = buf.cast("B") if size else memoryview(b"")  # cast refuses zeros in the shape
    if dt.kind in "Ub":
        _check_values(buf, dt)
    arr = np.frombuffer(buf, dt).reshape(shape)
    arr.flags.writeable = False  # zmq frames are writable buffers; messages are immutable
    return arr


def _build_np_scalar(dec: Decoder, lst: list[Any]) -> Any:
    _, dtype, data = lst
    dt = dec._dtype(dtype)
    if type(data) is not bytes or len(data) != dt.itemsize:
        raise _malformed("a numpy scalar's data does not match its dtype")
    if dt.kind in "Ub":
        _check_values(data, dt)
    return np.frombuffer(data, dt)[0]


def _tensor_dtype(name: Any, shape: Any) -> tuple[np.dtype[Any], int]:
    dt = DTYPES.get(name) if type(name) is str else None
    if dt is None:
        raise _malformed(f"unknown tensor dtype {name!r}")
    return dt, _array_size(dt, shape)


def _build_tensor(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, data = lst
    dt, size = _tensor_dtype(name, shape)
    if type(data) is not bytes or len(data) != size:
        raise _malformed("a tensor's data does not match its dtype and shape")
    if size <= settings.threshold:
        return _make(data, 0, tuple(shape), dt, size)
    return tensor(np.frombuffer(data, dt).reshape(shape))


def _build_tensor_frame(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, index = lst
    dt, size = _tensor_dtype(name, shape)
    buf = _frame(dec, index, size, "a tensor")
    # One copy, into this node's shared memory, where the tensor lives from now on.
    return tensor(np.frombuffer(buf, np.uint8).view(dt).reshape(shape))


def _build_tensor_handle(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, seq, index, offset = lst
    dt, size = _tensor_dtype(name, shape)
    segments = dec._claimed.get(seq) if type(seq) is int else None
    if segments is None:
        claim = dec.claim
        segments = claim(seq) if claim is not None and type(seq) is int else None
        if segments is None:
            raise _malformed(f"a tensor handle's segments (token {seq!r}) did not arrive")
        dec._claimed[seq] = segments
    if type(index) is not int or not 0 <= index < len(segments):
        raise _malformed(f"a tensor handle names segment {index!r} of {len(segments)}")
    seg = segments[index]
    if type(seg) is not Segment:
        raise _malformed(f"a tensor handle names descriptor {index!r}, not a shared-memory one")
    if type(offset) is not int or offset < 0 or offset + size > seg.size:
        raise _malformed(f"a tensor handle's bytes lie outside its {seg.size}-byte segment")
    if seg.device != "cpu":
        raise _malformed(f"a cpu tensor handle names memory of {seg.device}")
    if size == 0:
        return _make(b"", 0, tuple(shape), dt, 0)
    return _make(seg, offset, tuple(shape), dt, size)


def _wire_device(name: Any, kinds: tuple[str, ...] = ("fake", "cuda")) -> str:
    """A device name from a peer, checked: ``fake:N`` or ``cuda:N`` (of ``kinds``)."""
    try:
        kind, _ = parse_device(name)
    except (TypeError, ValueError):
        raise _malformed(f"bad device name {name!r}") from None
    if kind not in kinds:
        raise _malformed(f"device {name!r} where a {' or '.join(kinds)} device belongs")
    return name  # type: ignore[no-any-return]


_warned_no_cuda: set[str] = set()


def _landing(device: str) -> str:
    """Where staged bytes of a tensor of ``device`` land here: this worker's own device, or
    ``device`` if this node can have it, or else cpu (for CUDA: said once per device)."""
    here = current_device()
    if here != "cpu":
        return here
    if device.startswith("fake:"):
        return device
    if int(device[5:]) < cuda_count():
        return device
    if device not in _warned_no_cuda:
        _warned_no_cuda.add(device)
        log.warning(
            "numbeam: received tensors of %s land on cpu: there is no %s here", device, device
        )
    return "cpu"


def _staged(dec: Decoder, host: np.ndarray, device: str) -> Tensor:
    target = _landing(device)
    if target == "cpu":
        return tensor(host)
    buf = _backend(target).from_host(target, np.ascontiguousarray(host))
    return _make(buf, 0, host.shape, host.dtype, host.nbytes)


def _build_dev_tensor(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, data, device = lst
    dt, size = _tensor_dtype(name, shape)
    device = _wire_device(device)
    if type(data) is not bytes or len(data) != size:
        raise _malformed("a tensor's data does not match its dtype and shape")
    return _staged(dec, np.frombuffer(data, dt).reshape(shape), device)


def _build_dev_tensor_frame(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, index, device = lst
    dt, size = _tensor_dtype(name, shape)
    device = _wire_device(device)
    buf = _frame(dec, index, size, "a tensor")
    return _staged(dec, np.frombuffer(buf, np.uint8).view(dt).reshape(shape), device)


def _moved(t: Tensor, device: str) -> Tensor:
    """A device worker keeps received device tensors on its own device (one copy)."""
    here = current_device()
    if here == "cpu" or here == device:
        return t
    return t.to(here)


def _build_fake_handle(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, seq, index, offset, device = lst
    dt, size = _tensor_dtype(name, shape)
    device = _wire_device(device, ("fake",))
    segments = dec._claimed.get(seq) if type(seq) is int else None
    if segments is None:
        claim = dec.claim
        segments = claim(seq) if claim is not None and type(seq) is int else None
        if segments is None:
            raise _malformed(f"a tensor handle's segments (token {seq!r}) did not arrive")
        dec._claimed[seq] = segments
    if type(index) is not int or not 0 <= index < len(segments):
        raise _malformed(f"a tensor handle names segment {index!r} of {len(segments)}")
    seg = segments[index]
    if type(seg) is not Segment:
        raise _malformed(f"a tensor handle names descriptor {index!r}, not a shared-memory one")
    if type(offset) is not int or offset < 0 or offset + size > seg.size:
        raise _malformed(f"a tensor handle's bytes lie outside its {seg.size}-byte segment")
    if not seg.adopt_device(device):
        raise _malformed(f"a handle names memory of {seg.device} as {device}")
    return _moved(_make(seg, offset, tuple(shape), dt, size), device)


def _build_cuda_handle(dec: Decoder, lst: list[Any]) -> Any:
    _, name, shape, device, seq, offset, handle = lst
    dt, size = _tensor_dtype(name, shape)
    device = _wire_device(device, ("cuda",))
    if type(offset) is not int or offset < 0:
        raise _malformed("a CUDA tensor handle's offset is not an int >= 0")
    if cuda_count() <= int(device[5:]):
        raise _malformed(f"a CUDA handle to {device}, which this node cannot open")

    def fd_at(index: int) -> int:
        """The descriptor at ``index`` of those passed with token ``seq`` (a pool's)."""
        passed = dec._claimed.get(seq) if type(seq) is int else None
        if passed is None:
            claim = dec.claim
            passed = claim(seq) if claim is not None and type(seq) is int else None
            if passed is None:
                raise _malformed(f"a CUDA handle's descriptors (token {seq!r}) did not arrive")
            dec._claimed[seq] = passed
        if not 0 <= index < len(passed):
            raise _malformed(f"a CUDA handle names descriptor {index!r} of {len(passed)}")
        fd = getattr(passed[index], "fd", None)
        if type(fd) is not int:
            raise _malformed(f"a CUDA handle names descriptor {index!r}, which is not one")
        return fd

    try:
        buf = _backend(device).import_handle(device, handle, offset + size, dec.peer, fd_at)
    except (TypeError, ValueError) as e:
        raise _malformed(f"a CUDA tensor handle: {e}") from None
    return _moved(_make(buf, offset, tuple(shape), dt, size), device)


_TUPLE_TAG = _Tag(_TUPLE, _build_tuple)
_PID_TAG = _Tag(_PID, _build_pid)
_TAGS: tuple[_Tag | None, ...] = (
    None,
    _TUPLE_TAG,
    _Tag(_SET, _build_set),
    _Tag(_FROZENSET, _build_frozenset),
    _Tag(_COMPLEX, _build_complex),
    _PID_TAG,
    _Tag(_REF, _build_ref),
    _Tag(_TIMER_REF, _build_timer_ref),
    _Tag(_DOWN, _build_down),
    _Tag(_EXIT, _build_exit),
    _Tag(_NODE_DOWN, _build_node_down),
    _Tag(_REMOTE_ERROR, _build_remote_error),
    _Tag(_ARRAY, _build_array),
    _Tag(_ARRAY_FRAME, _build_array_frame),
    _Tag(_NP_SCALAR, _build_np_scalar),
    _Tag(_TENSOR, _build_tensor),
    _Tag(_TENSOR_FRAME, _build_tensor_frame),
    _Tag(_TENSOR_HANDLE, _build_tensor_handle),
    _Tag(_DEV_TENSOR, _build_dev_tensor),
    _Tag(_DEV_TENSOR_FRAME, _build_dev_tensor_frame),
    _Tag(_FAKE_HANDLE, _build_fake_handle),
    _Tag(_CUDA_HANDLE, _build_cuda_handle),
)
assert len(_TAGS) == _N_CODES
_TAG_OF = {code: tag for code, tag in enumerate(_TAGS) if tag is not None}


class Decoder:
    """Turns msgpack bytes (and out-of-band frames) back into a message; see the module doc.

    ``intern_pid(node, id, creation)`` returns the Pid to use, so a node can hand back its own
    cached Pid objects; by default a new `Pid` is built. Not reentrant: one per thread.
    """

    __slots__ = (
        "_claimed",
        "_dtypes",
        "_ext",
        "_frames",
        "_intern_pid",
        "_list",
        "_tags",
        "claim",
        "peer",
    )

    def __init__(self, intern_pid: Callable[[str, int, int], Pid] | None = None) -> None:
        self._intern_pid: Callable[[str, int, int], Pid] = intern_pid or Pid
        self._frames: Sequence[Any] = ()
        self._tags = 0
        self._dtypes: dict[str, np.dtype[Any]] = {}
        # Set by a node while it decodes what a peer on its host sent: claim(token) returns
        # the segments passed ahead of the message with that token, mapped, or None.
        self.claim: Callable[[int], list[Any] | None] | None = None
        self._claimed: dict[int, list[Any]] = {}
        # The name of the node whose message is decoded, when the node says: a CUDA buffer
        # opened from its handle is released to that node when the last reference here goes.
        self.peer: str | None = None
        # Bound once: an attribute lookup per call would allocate two method objects.
        self._ext = self._ext_hook
        self._list = self._list_hook

    def decode(self, data: bytes | memoryview, frames: Sequence[Any] = ()) -> Any:
        """Return the one message encoded in ``data``; raise WireError if it is malformed."""
        self._frames = frames
        self._tags = 0
        try:
            # Keywords spelled out: a **dict costs more than the whole unpack of a small message.
            obj = unpackb(
                data,
                ext_hook=self._ext,
                list_hook=self._list,
                raw=False,
                strict_map_key=False,
                timestamp=2,
            )
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"malformed message: {type(exc).__name__}: {exc}") from exc
        finally:
            self._frames = ()
            if self._claimed:
                self._claimed = {}
        if self._tags:
            raise _malformed("a type tag outside the head of an array")
        return obj

    def decode_stream(self, data: bytes | memoryview, frames: Sequence[Any] = ()) -> list[Any]:
        """Return every message of a batch (encodings laid end to end), in order.

        All or nothing: if any part is malformed or the last one is cut short, raise WireError.
        """
        size = memoryview(data).nbytes
        if size == 0:
            return []
        self._frames = frames
        self._tags = 0
        try:
            # The limits on str, bin, array and map sizes default to max_buffer_size, so a
            # header cannot claim more elements than the batch has bytes.
            unpacker = Unpacker(
                max_buffer_size=size,
                ext_hook=self._ext,
                list_hook=self._list,
                raw=False,
                strict_map_key=False,
                timestamp=2,
            )
            unpacker.feed(data)
            out = []
            consumed = 0
            # tell() after a message is where it ends; iteration stops quietly inside a
            # truncated last message, having advanced tell() past its start.
            for obj in unpacker:
                out.append(obj)
                consumed = unpacker.tell()
        except WireError:
            raise
        except Exception as exc:
            raise WireError(f"malformed batch: {type(exc).__name__}: {exc}") from exc
        finally:
            self._frames = ()
            if self._claimed:
                self._claimed = {}
        if consumed != size:
            raise _malformed(f"the batch ends inside a message ({size - consumed} bytes left)")
        if self._tags:
            raise _malformed("a type tag outside the head of an array")
        return out

    def _ext_hook(self, code: int, data: bytes) -> Any:
        tag = _TAG_OF.get(code)
        if tag is None or data:
            raise _malformed(f"unknown ext type {code} ({len(data)} bytes)")
        self._tags += 1
        return tag

    def _list_hook(self, lst: list[Any]) -> Any:
        if lst:
            tag = lst[0]
            if tag.__class__ is _Tag:
                self._tags -= 1
                if tag is _TUPLE_TAG:
                    del lst[0]
                    return tuple(lst)
                if tag is _PID_TAG:  # the next most common: inlined, as for tuples
                    _, node, id_, creation = lst
                    if type(node) is str and type(id_) is int and type(creation) is int:
                        return self._intern_pid(node, id_, creation)
                    raise _malformed("a pid is not (str, int, int)")
                # A wrong number of fields fails the builder's unpacking: a ValueError, which
                # decode reports as WireError like anything else the builders raise.
                return tag.build(self, lst)
        return lst

    def _dtype(self, text: Any) -> np.dtype[Any]:
        dt = self._dtypes.get(text) if type(text) is str else None
        if dt is not None:
            return dt
        if type(text) is not str or not _DTYPE_RE.fullmatch(text):
            raise _malformed(f"unsupported dtype {text!r}")
        try:
            dt = np.dtype(text)
        except Exception as exc:
            raise _malformed(f"unsupported dtype {text!r}") from exc
        if dt.str != text or dt.kind not in _ARRAY_KINDS or dt.itemsize == 0:
            raise _malformed(f"unsupported dtype {text!r}")
        if len(self._dtypes) >= _MAX_DTYPE_CACHE:
            self._dtypes.clear()
        self._dtypes[text] = dt
        return dt
