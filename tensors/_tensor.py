"""`Tensor`: an immutable n-dimensional array whose bytes live in shared memory.

A tensor of more than ``tensor_threshold`` bytes (64 by default, as BEAM's refc binaries) is
born in shared memory (see `_memory`); a smaller one keeps its bytes in a ``bytes`` object
that is copied with the message. Within a node a tensor is passed by reference, like any
message; to a node on the same host it crosses as a handle to its segment; to another host
its bytes travel as zero-copy frames (see `numbeam.transport._wire`).

A *device* tensor (``device="fake:0"``, ``"cuda:1"``) holds a buffer of that device's memory
instead (see `numbeam.gpu._backend`); ``device`` is read off the buffer (``"cpu"`` for inline
bytes), so the `Tensor` object has no field for it. Its bytes are read through ``array()``
(numpy for fake devices, whose memory is host memory; CuPy for CUDA) or copied with ``to()``;
``numpy()`` is for ``cpu`` tensors only.

The bytes are freed when the last handle goes: here, when the `Tensor` object and every numpy
view of it are gone (each view keeps the tensor alive through its ``base``); across processes,
when the kernel drops the last mapping of the segment.
"""

from __future__ import annotations

import operator
import os
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from ._dtypes import DTYPES, dtype_name, resolve_dtype
from ._format import format_tensor
from ._memory import (
    _BY_BITS,
    ARENA_MAX,
    Chunk,
    Segment,
    alloc_block,
    alloc_segment,
    class_of,
    settings,
)

__all__ = ["Builder", "Tensor", "build", "from_dlpack", "tensor"]

_BF16 = DTYPES["bf16"]
# Defaults for Python values, as Nx: integers s64, floats f32, complex c64.
_PY_DEFAULTS = {"i": "s64", "u": "s64", "f": "f32", "c": "c64", "b": "u8"}
_DEVICE = "cpu"
_KDLCPU = 1
_KDLCUDA = 2


class _Export:
    """What numpy wraps to view a tensor's bytes: its ``base``, which keeps the tensor alive."""

    __slots__ = ("__array_interface__", "tensor")

    def __init__(self, t: Tensor, interface: dict[str, Any]) -> None:
        self.tensor = t
        self.__array_interface__ = interface


class Tensor:
    """An immutable tensor. Build one with `numbeam.tensor`; never call this class.

    ``shape`` (a tuple), ``dtype`` (an Nx name such as ``"f32"``), ``device``, ``nbytes``,
    ``numpy()`` (a read-only view, no copy), DLPack export, and ``to(device)``.
    """

    __slots__ = ("_chunk", "_dt", "_mem", "_nbytes", "_off", "_shape", "_tok")

    _chunk: Chunk | None  # the arena chunk this tensor's block belongs to, if it owns one
    _tok: tuple[int] | None  # the block's token: holding it keeps the block in use
    _mem: Segment | bytes  # where the bytes are: a mapped segment, or inline bytes
    _off: int  # offset of the first byte in _mem
    _nbytes: int
    _shape: tuple[int, ...]
    _dt: np.dtype[Any]

    def __init__(self) -> None:
        raise TypeError("build tensors with numbeam.tensor(...) or numbeam.tensors.build(...)")

    # -- attributes ----------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> str:
        """The Nx dtype name: ``u8 u16 u32 u64 s8 s16 s32 s64 f16 bf16 f32 f64 c64 c128``."""
        return dtype_name(self._dt)  # type: ignore[return-value]

    @property
    def device(self) -> str:
        """Where the bytes are: ``"cpu"``, ``"fake:N"`` or ``"cuda:N"``."""
        mem = self._mem
        return _DEVICE if mem.__class__ is bytes else mem.device  # type: ignore[union-attr]

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return self._nbytes // self._dt.itemsize

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a scalar tensor")
        return self._shape[0]

    @property
    def shared(self) -> bool:
        """Whether the bytes are in shared memory (False: small, kept inline)."""
        return self._mem.__class__ is not bytes

    # -- reading -------------------------------------------------------------------------------

    def numpy(self) -> np.ndarray:
        """A read-only numpy view of the bytes (no copy); it keeps the tensor alive.

        ``cpu`` tensors only: a device tensor raises TypeError (use ``t.to("cpu")``, or
        ``t.array()`` for the device's own array)."""
        mem = self._mem
        if mem.__class__ is bytes:
            return np.frombuffer(mem, self._dt).reshape(self._shape)  # type: ignore[arg-type]
        if mem.device != _DEVICE:  # type: ignore[union-attr]
            raise _on_device_error(self, "numpy()")
        return _view(self, True)

    def array(self) -> Any:
        """The device's own array over the bytes, no copy: a read-only numpy array for ``cpu``
        and ``fake:*`` tensors, a ``cupy.ndarray`` for ``cuda:*`` (read-only by contract: CuPy
        has no read-only arrays; writing to it is undefined). It keeps the tensor alive."""
        mem = self._mem
        if mem.__class__ is bytes:
            return np.frombuffer(mem, self._dt).reshape(self._shape)  # type: ignore[arg-type]
        dev = mem.device  # type: ignore[union-attr]
        if dev == _DEVICE or mem.__class__ is Segment:  # cpu, and fake devices' host memory
            return _view(self, True)
        return _backend(dev).array(mem, self._off, self._shape, self._dt, True)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if self._mem.__class__ is not bytes and self._mem.device != _DEVICE:  # type: ignore[union-attr]
            # As CuPy: no silent conversion of device memory to a host array.
            raise _on_device_error(self, "conversion to a numpy array")
        a = self.numpy()
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError(f"a {self.dtype} tensor cannot become {dtype} without a copy")
            return a.astype(dtype)
        return a.copy() if copy else a

    def tolist(self) -> Any:
        return self.numpy().tolist()

    def item(self) -> Any:
        return self.numpy().item()

    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: Any = None,
        copy: bool | None = None,
    ) -> Any:
        """Export as DLPack (read-only: consumers must speak DLPack 1.0, as numpy 2 does).

        A ``cuda:*`` tensor exports its CuPy array (kDLCUDA), a ``fake:*`` one its host memory
        (kDLCPU: fake device memory is host memory, so consumers see it as CPU memory)."""
        mem = self._mem
        dev = _DEVICE if mem.__class__ is bytes else mem.device  # type: ignore[union-attr]
        if dev != _DEVICE and mem.__class__ is not Segment:
            arr = self.array()
            if max_version is None:
                return arr.__dlpack__(stream=stream)
            return arr.__dlpack__(
                stream=stream, max_version=max_version, dl_device=dl_device, copy=copy
            )
        a = self.array()
        if max_version is None:
            # The old protocol cannot say "read-only", so numpy refuses; say what to do.
            raise BufferError(
                "a numbeam tensor is read-only and DLPack before 1.0 cannot mark it so; use a "
                "consumer that passes max_version=(1, 0) or later (numpy >= 2.1), or .numpy()"
            )
        return a.__dlpack__(stream=stream, max_version=max_version, dl_device=dl_device, copy=copy)

    def __dlpack_device__(self) -> tuple[int, int]:
        """``(kDLCPU, 0)`` for ``cpu`` and ``fake:*`` (host memory); ``(kDLCUDA, N)`` for
        ``cuda:N``."""
        mem = self._mem
        if mem.__class__ is bytes or mem.__class__ is Segment:
            return (_KDLCPU, 0)
        return (_KDLCUDA, int(mem.device[5:]))  # type: ignore[union-attr]

    def to(self, device: str) -> Tensor:
        """This tensor on ``device`` (``"cpu"``, ``"fake:N"``, ``"cuda:N"``): itself if it is
        there already, else a copy there (device to device is a peer copy where the hardware
        allows). An unknown device raises ValueError naming the ones this node has."""
        here = self.device
        if device == here:
            return self
        device = _check_device(device)
        if device == here:
            return self
        return _copy_to(self, here, device)

    def __repr__(self) -> str:
        here = self.device
        if here == _DEVICE:
            values = self.numpy()
        elif self._mem.__class__ is Segment:
            values = _view(self, True)
        else:
            values = self.to(_DEVICE).numpy()
        return format_tensor(self.dtype, self._shape, values, device=here)

    def __reduce__(self) -> Any:
        raise TypeError("numbeam tensors are not pickled; send them to a process instead")

    def __copy__(self) -> Tensor:
        return self  # immutable: a copy would be the same (as for a tuple)

    def __deepcopy__(self, memo: dict[int, Any]) -> Tensor:
        return self


def _on_device_error(t: Tensor, what: str) -> TypeError:
    return TypeError(
        f"{what} of a tensor on {t.device}: copy it to the host with t.to('cpu') first "
        "(or use t.array(), the device's own array)"
    )


def _check_device(device: Any) -> str:
    from numbeam.gpu._devices import check_device

    return check_device(device)


def _backend(device: str) -> Any:
    from numbeam.gpu._backend import backend

    return backend(device)


def _host_bytes(t: Tensor) -> np.ndarray:
    """The tensor's bytes as a host numpy array of its dtype and shape: a view for ``cpu`` and
    fake devices, a copy from CUDA memory."""
    mem = t._mem
    if mem.__class__ is bytes or mem.__class__ is Segment:
        return t.array()  # type: ignore[no-any-return]
    out = np.empty(t._shape, t._dt)
    _backend(mem.device).to_host(mem, t._off, out)  # type: ignore[union-attr]
    return out


def _copy_to(t: Tensor, here: str, device: str) -> Tensor:
    """A copy of ``t`` (on ``here``) on another, checked, device."""
    if device == _DEVICE:
        if here.startswith("fake:"):
            return tensor(t.array())
        b = Builder(t._shape, t._dt)
        _backend(here).to_host(t._mem, t._off, b._array)
        return b.freeze()
    if here == _DEVICE or here[:4] != device[:4]:
        buf = _backend(device).from_host(device, np.ascontiguousarray(_host_bytes(t)))
    else:  # same kind: device to device (a peer copy for CUDA)
        buf = _backend(device).copy(t._mem, t._off, t._nbytes, device)
    return _make(buf, 0, t._shape, t._dt, t._nbytes)


def _on_device(data: Any, dtype: Any, device: str) -> Tensor:
    """``tensor(data, dtype)`` on a checked device other than ``cpu``."""
    if isinstance(data, Tensor):
        if dtype is None or resolve_dtype(dtype)[1] == data._dt:
            return data.to(device)
        a = _convert(_host_bytes(data), resolve_dtype(dtype)[1])
    elif isinstance(data, np.ndarray):
        if data.__class__ is not np.ndarray:
            data = data.view(np.ndarray)
        _, dt = resolve_dtype(data.dtype if dtype is None else dtype)
        a = _convert(data, dt)
    else:
        a = _python_array(data, dtype)
    buf = _backend(device).from_host(device, a)
    shape = a.shape
    return _make(buf, 0, shape, a.dtype, a.nbytes)


def _view(t: Tensor, readonly: bool) -> np.ndarray:
    """A numpy array over a shared tensor's bytes whose ``base`` keeps ``t`` alive."""
    dt = t._dt
    addr = t._mem.addr + t._off  # type: ignore[union-attr]
    face: dict[str, Any]
    if dt is _BF16:  # numpy's array interface cannot name a bfloat16
        face = {
            "data": (addr, readonly),
            "shape": (t._nbytes // 2,),
            "typestr": "<u2",
            "version": 3,
        }
        return np.asarray(_Export(t, face)).view(_BF16).reshape(t._shape)
    face = {"data": (addr, readonly), "shape": t._shape, "typestr": dt.str, "version": 3}
    return np.asarray(_Export(t, face))


_new = object.__new__


def _py_make(
    mem: Segment | bytes,
    off: int,
    shape: tuple[int, ...],
    dt: np.dtype[Any],
    nbytes: int,
    chunk: Chunk | None = None,
    tok: tuple[int] | None = None,
) -> Tensor:
    t = _new(Tensor)
    t._mem = mem
    t._off = off
    t._shape = shape
    t._dt = dt
    t._nbytes = nbytes
    t._chunk = chunk
    t._tok = tok
    return t


def _py_set_mem(t: Tensor, mem: bytes) -> None:
    t._mem = mem


_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}


def _intern_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(_shapes) >= 4096:
        _shapes.clear()
    _shapes[shape] = shape
    return shape


# The same Tensor as a C type, when the optional extension was built (see _ctensor.c): it is
# not tracked by the garbage collector, which halves what holding many small tensors costs.
# NUMBEAM_PURE_PYTHON=1 keeps the class above (the tests run both).
_ctensor: Any = None
if not os.environ.get("NUMBEAM_PURE_PYTHON"):
    try:
        from . import _ctensor  # type: ignore[attr-defined, no-redef]
    except ImportError:
        pass
# _make(mem, off, shape, dt, nbytes, chunk=None, tok=None) -> a new Tensor.
_make: Callable[..., Tensor] = _py_make
_set_mem: Callable[[Tensor, bytes], None] = _py_set_mem
_small: Callable[[Any], Tensor | None] | None = None
if _ctensor is not None:
    for _name, _value in vars(Tensor).items():
        if _name not in ("__slots__", "__module__", "__dict__", "__init__", "__annotations__"):
            if not isinstance(_value, types.MemberDescriptorType):
                setattr(_ctensor.Tensor, _name, _value)
    Tensor = _ctensor.Tensor  # type: ignore[misc]
    _make = _ctensor.make
    _set_mem = _ctensor.set_mem
    _ctensor.setup(np.ndarray, _BY_BITS, tuple(DTYPES.values()), _shapes, settings, ARENA_MAX)
    _small = _ctensor.small


def tensor(data: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """A new immutable tensor from a numpy array, a (nested) list or tuple, or a scalar.

    ``dtype`` is an Nx name (``"f32"``) or a numpy dtype; without it a numpy array keeps its
    dtype, Python ints become ``s64``, floats ``f32`` and complex numbers ``c64`` (as in Nx),
    and bools ``u8``. A tensor is returned as it is, or converted if ``dtype`` differs.
    ``device`` (None: ``"cpu"``) puts it in that device's memory (``"fake:0"``, ``"cuda:1"``);
    a tensor given as ``data`` is then copied there with ``to``.
    """
    if device is not None:
        device = _check_device(device)
        if device != _DEVICE:
            return _on_device(data, dtype, device)
    if data.__class__ is not np.ndarray or dtype is not None:
        return _tensor(data, dtype)
    if _small is not None:
        t = _small(data)  # the hot path of the C extension, when built
        if t is not None:
            return t
    dt = data.dtype
    if dt.type not in _FAST_TYPES or not dt.isnative:
        return _tensor(data, dtype)
    # A numpy array of a tensor dtype: copy it into new memory (slice assignment copes with
    # any layout). Small tensors are the hot path, so it is written out here, not called.
    nbytes = data.nbytes
    if nbytes > ARENA_MAX:
        seg = alloc_segment(nbytes)
        np.frombuffer(seg.mm, dt, nbytes // dt.itemsize).reshape(data.shape)[...] = data
        return _make(seg, 0, data.shape, dt, nbytes)
    if nbytes <= settings.threshold:
        return _make(data.tobytes(), 0, data.shape, dt, nbytes)
    cls = _BY_BITS[(nbytes - 1).bit_length()]
    chunk = cls.current
    try:
        tok = chunk.free.pop()  # type: ignore[union-attr]
    except (IndexError, AttributeError):
        chunk, tok = alloc_block(cls)
    assert chunk is not None
    idx = tok[0]
    slab = chunk.slabs.get(dt.type)
    if slab is None:
        slab = chunk.slab(dt)
    if nbytes == cls.bsize and data.ndim == 1:
        slab[idx] = data
    else:
        slab[idx, : nbytes // dt.itemsize] = data.reshape(-1)
    # (If the copy raised, the token is dropped with this frame: the block is free again.)
    shape = data.shape
    # One shape tuple for all tensors of a shape: a tuple less per tensor for the GC to track.
    shape = _shapes.get(shape) or _intern_shape(shape)
    return _make(chunk.seg, idx * cls.bsize, shape, dt, nbytes, chunk, tok)


def _tensor(data: Any, dtype: Any) -> Tensor:
    if isinstance(data, np.ndarray):
        if data.__class__ is not np.ndarray:  # a subclass: keep only the data
            data = data.view(np.ndarray)
        _, dt = resolve_dtype(data.dtype if dtype is None else dtype)
        return tensor(_convert(data, dt))
    if isinstance(data, Tensor):
        if dtype is None or resolve_dtype(dtype)[1] == data._dt:
            return data
        here = data.device
        return tensor(_host_bytes(data), dtype, None if here == _DEVICE else here)
    return _from_python(data, dtype)


_FAST_TYPES = frozenset(dt.type for dt in DTYPES.values())


def _convert(a: np.ndarray, dt: np.dtype[Any]) -> np.ndarray:
    src = a.dtype
    if src != dt and src.kind not in "biufc" and src != _BF16:
        raise TypeError(f"cannot make a tensor from a numpy array of dtype {src}")
    if a.dtype.kind == "c" and dt.kind != "c":
        raise TypeError(f"cannot make a {dtype_name(dt)} tensor from complex values")
    return np.asarray(a, dt, order="C")


def _from_python(data: Any, dtype: Any) -> Tensor:
    return tensor(_python_array(data, dtype))


def _python_array(data: Any, dtype: Any) -> np.ndarray:
    """``data`` (not a numpy array) as a C-contiguous numpy array of the tensor's dtype."""
    if isinstance(data, (str, bytes, bytearray, dict, set, frozenset)) or data is None:
        raise TypeError(f"cannot make a tensor from a {type(data).__name__}")
    try:
        a = np.asarray(data)
    except ValueError as e:
        raise ValueError(f"cannot make a tensor from a ragged nested sequence: {e}") from None
    if a.dtype.kind not in "biufc" and a.dtype != _BF16:
        raise TypeError(
            f"cannot make a tensor from {type(data).__name__} of numpy dtype {a.dtype} "
            "(tensors hold numbers only)"
        )
    if dtype is None:
        if isinstance(data, np.generic) or a.dtype == _BF16:
            _, dt = resolve_dtype(a.dtype)
        else:
            if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
                raise OverflowError(
                    "an integer does not fit s64, the default for Python ints; pass dtype='u64'"
                )
            dt = DTYPES[_PY_DEFAULTS[a.dtype.kind]]
    else:
        _, dt = resolve_dtype(dtype)
    return _convert(a, dt)


def from_dlpack(x: Any) -> Tensor:
    """A tensor from any DLPack producer (its bytes are copied into memory of our own; a
    numbeam tensor is returned as it is). CPU memory becomes a ``cpu`` tensor; CUDA memory
    (``__dlpack_device__()`` says kDLCUDA) a ``cuda:N`` tensor on the same GPU, through CuPy."""
    if isinstance(x, Tensor):
        return x
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"{type(x).__name__} does not support DLPack (no __dlpack__)")
    where = getattr(x, "__dlpack_device__", None)
    kind, index = where() if where is not None else (_KDLCPU, 0)
    if kind == _KDLCUDA:
        device = _check_device(f"cuda:{int(index)}")
        return _make_from(_backend(device).from_dlpack(device, x))
    if kind != _KDLCPU:
        raise TypeError(f"DLPack device type {kind} is not supported (CPU and CUDA are)")
    return tensor(np.from_dlpack(x))


def _make_from(made: tuple[Any, tuple[int, ...], np.dtype[Any]]) -> Tensor:
    buf, shape, dt = made
    nbytes = dt.itemsize
    for n in shape:
        nbytes *= n
    return _make(buf, 0, shape, dt, nbytes)


# ----------------------------------------------------------------------------- building in place


class Builder:
    """Fresh shared memory to write a tensor into, without an extra copy.

    ``array`` hands out a writable numpy array once; ``freeze()`` makes that array read-only
    and returns the tensor. Views taken from the array before freezing stay writable: do not
    keep them. With ``device`` (``"fake:0"``, ``"cuda:1"``) the memory is that device's and
    ``array`` is its own array (numpy for fake devices, CuPy for CUDA). ::

        b = nb.tensors.Builder((1024, 1024), "f32")
        np.matmul(x, y, out=b.array)
        t = b.freeze()
    """

    __slots__ = ("_array", "_given", "_inline", "_tensor")

    def __init__(
        self,
        shape: int | tuple[int, ...] | list[int],
        dtype: Any = "f32",
        device: str | None = None,
    ) -> None:
        if isinstance(shape, (int, np.integer)):
            shape = (int(shape),)
        try:
            if isinstance(shape, (str, bytes)):
                raise TypeError
            shape = tuple(operator.index(n) for n in shape)
        except TypeError:
            raise TypeError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
        if any(n < 0 for n in shape):
            raise ValueError(f"shape must not have negative sizes, got {shape!r}")
        _, dt = resolve_dtype(dtype)
        nbytes = dt.itemsize
        for n in shape:
            nbytes *= n
        self._given = False
        self._inline: bytearray | None = None
        self._tensor: Tensor | None = None
        self._array: Any = None  # numpy; CuPy for a CUDA device
        if device is not None and _check_device(device) != _DEVICE:
            be = _backend(device)
            t = _make(be.alloc(device, nbytes), 0, shape, dt, nbytes)
            if t._mem.__class__ is Segment:  # fake: host memory, viewed as cpu memory is
                self._array = _view(t, False)
            else:
                self._array = be.array(t._mem, 0, shape, dt, False)
            self._tensor = t
            return
        if nbytes <= settings.threshold:
            self._inline = bytearray(nbytes)
            arr = np.frombuffer(self._inline, dt) if nbytes else np.empty(0, dt)
            self._array = arr.reshape(shape)
            self._tensor = _make(b"", 0, shape, dt, nbytes)
            return
        if nbytes <= ARENA_MAX:
            chunk, tok = alloc_block(class_of(nbytes))
            t = _make(chunk.seg, tok[0] * chunk.bsize, shape, dt, nbytes, chunk, tok)
        else:
            t = _make(alloc_segment(nbytes), 0, shape, dt, nbytes)
        # The array's base holds the tensor: its block lives as long as the array does.
        self._array = _view(t, False)
        self._tensor = t

    @property
    def array(self) -> np.ndarray:
        """The writable array to fill; handed out once."""
        if self._array is None:
            raise RuntimeError("this builder is frozen")
        if self._given:
            raise RuntimeError("the builder's array was handed out already")
        self._given = True
        return self._array

    def freeze(self) -> Tensor:
        """The tensor; the array handed out becomes read-only."""
        arr, t = self._array, self._tensor
        if arr is None or t is None:
            raise RuntimeError("this builder is frozen already")
        self._array = self._tensor = None
        if arr.__class__ is np.ndarray:
            arr.flags.writeable = False
        else:  # CuPy: no read-only flag; the fill's kernels must be done before the bytes go
            _backend(t.device).synchronize(t._mem)
        if self._inline is not None:
            _set_mem(t, bytes(self._inline))
        return t


def build(
    shape: int | tuple[int, ...] | list[int],
    dtype: Any,
    fill: Callable[[Any], Any],
    device: str | None = None,
) -> Tensor:
    """A tensor written in place by ``fill(out)``, e.g. ``build((n, n), "f32", lambda out:
    np.matmul(x, y, out=out))``. On a ``device``, ``out`` is that device's array (numpy for
    ``fake:*``, CuPy for ``cuda:*``)."""
    b = Builder(shape, dtype, device)
    fill(b.array)
    return b.freeze()
