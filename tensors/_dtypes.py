"""Tensor dtypes, named as in Nx: ``u8 u16 u32 u64 s8 s16 s32 s64 f16 bf16 f32 f64 c64 c128``.

Each name maps to one numpy dtype (native byte order); ``bf16`` is ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["DTYPES", "dtype_name", "resolve_dtype"]

#: Nx name -> numpy dtype.
DTYPES: dict[str, np.dtype[Any]] = {
    "u8": np.dtype(np.uint8),
    "u16": np.dtype(np.uint16),
    "u32": np.dtype(np.uint32),
    "u64": np.dtype(np.uint64),
    "s8": np.dtype(np.int8),
    "s16": np.dtype(np.int16),
    "s32": np.dtype(np.int32),
    "s64": np.dtype(np.int64),
    "f16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "c64": np.dtype(np.complex64),
    "c128": np.dtype(np.complex128),
}

# numpy dtype -> Nx name; dtypes compare equal across byte orders, so keys are native only.
_NAMES: dict[np.dtype[Any], str] = {dt: name for name, dt in DTYPES.items()}
# Also by the numpy scalar type: dict lookups on a dtype hash its fields, on a type they don't.
_NAMES_BY_TYPE: dict[type, str] = {dt.type: name for name, dt in DTYPES.items()}
_ALIASES = {"bool": "u8", "b1": "u8"}


def dtype_name(dt: np.dtype[Any]) -> str | None:
    """The Nx name of a native-order numpy dtype, or None if tensors have no such dtype."""
    name = _NAMES_BY_TYPE.get(dt.type)
    if name is None or not dt.isnative:
        return None
    return name


def resolve_dtype(dtype: Any) -> tuple[str, np.dtype[Any]]:
    """``(name, numpy dtype)`` for an Nx name, a numpy dtype, or a numpy scalar type.

    Raises ValueError for an unknown name and TypeError for a dtype tensors cannot hold.
    """
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype, dtype)
        dt = DTYPES.get(name)
        if dt is None:
            raise ValueError(f"unknown tensor dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return name, dt
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"dtype must be an Nx dtype name ({', '.join(DTYPES)}) or a numpy dtype, got {dtype!r}"
        ) from None
    if dt == np.bool_:
        return "u8", DTYPES["u8"]
    native = dt.newbyteorder("=") if dt.byteorder in "<>" else dt
    found = _NAMES.get(native)
    if found is None:
        raise TypeError(f"tensors cannot hold numpy dtype {dt}; supported: {', '.join(DTYPES)}")
    return found, DTYPES[found]
