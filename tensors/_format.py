"""The readable repr of a tensor, laid out as Nx lays out ``#Nx.Tensor<...>``.

A repr must be cheap whatever the tensor's size, so only the entries that are printed are ever
read: the values are sliced down to at most about ``limit`` entries before anything is
formatted, and no Python list of the whole tensor is built. Floats print as the shortest
decimal that reads back to the same value at the tensor's own precision (an f32 0.1 prints
``0.1``), in Python's float style, with Nx's spellings ``NaN``, ``Inf`` and ``-Inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy

__all__ = ["format_tensor"]

_INT_DTYPES = frozenset({"u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64"})
_FLOAT_DTYPES = frozenset({"f16", "bf16", "f32", "f64"})
_COMPLEX_DTYPES = frozenset({"c64", "c128"})
_NX_SPELLING = {"nan": "NaN", "-nan": "NaN", "inf": "Inf", "-inf": "-Inf"}


def format_tensor(
    dtype: str,
    shape: tuple[int, ...],
    values: numpy.ndarray | None,
    *,
    device: str = "cpu",
    limit: int = 30,
) -> str:
    """Render a tensor as ``nb.Tensor<`` header, device, values ``>``, one item per line.

    ``values`` is an array of ``shape`` (``ml_dtypes.bfloat16`` for bf16), or None when the
    bytes cannot be read here, which prints ``...`` in their place. A device line is printed
    only for a device other than ``"cpu"``. When the tensor has more than ``limit`` elements,
    each dimension shows its first entries followed by ``...``, about ``limit`` values in all.
    """
    if dtype not in _INT_DTYPES and dtype not in _FLOAT_DTYPES and dtype not in _COMPLEX_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected an Nx dtype name such as 'f32'")
    if type(limit) is not int:
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    shape = tuple(shape)
    if values is not None and tuple(values.shape) != shape:
        raise ValueError(f"values have shape {tuple(values.shape)}, expected {shape}")

    lines = ["nb.Tensor<", "  " + dtype + "".join(f"[{n}]" for n in shape)]
    if device != "cpu":
        lines.append(f"  device: {device}")
    if values is None:
        lines.append("  ...")
    else:
        fmt = _formatter(dtype)
        if not shape:
            lines.append("  " + fmt(values[()]))
        else:
            # A view of just the printed corner: O(1) to take, whatever the tensor's size.
            corner = values[tuple(slice(0, c) for c in _shown_counts(shape, limit))]
            _render(corner, shape, fmt, "  ", "", lines)
    lines.append(">")
    return "\n".join(lines)


def _shown_counts(shape: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """How many leading entries of each dimension to print: all of them when it fits."""
    if math.prod(shape) <= limit:
        return shape
    counts = list(shape)
    budget = float(limit)
    # Smallest dimensions first, each taking the floor of the m-th root of what is left
    # (or all of itself if fewer): the product stays <= limit, and short dims lend the rest.
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    for left, i in zip(range(len(shape), 0, -1), order, strict=True):
        share = max(1, math.floor(budget ** (1.0 / left) + 1e-9))
        counts[i] = min(shape[i], share)
        budget /= counts[i]
    return tuple(counts)


def _render(
    corner: Any,
    shape: tuple[int, ...],
    fmt: Callable[[Any], str],
    indent: str,
    suffix: str,
    lines: list[str],
) -> None:
    """Append the lines of one dimension (``shape[0]`` long; ``corner`` its printed part)."""
    shown = len(corner)
    more = shown < shape[0]
    if len(shape) == 1:
        items = [fmt(x) for x in corner]
        if more:
            items.append("...")
        lines.append(indent + "[" + ", ".join(items) + "]" + suffix)
        return
    if shape[0] == 0:
        lines.append(indent + "[]" + suffix)
        return
    lines.append(indent + "[")
    inner = indent + "  "
    for k in range(shown):
        last = k == shown - 1 and not more
        _render(corner[k], shape[1:], fmt, inner, "" if last else ",", lines)
    if more:
        lines.append(inner + "...")
    lines.append(indent + "]" + suffix)


def _formatter(dtype: str) -> Callable[[Any], str]:
    if dtype in _INT_DTYPES:
        return lambda x: str(int(x))
    if dtype in _COMPLEX_DTYPES:
        part = _format_float if dtype == "c128" else _format_float_np

        def complex_(x: Any) -> str:
            imag = part(x.imag)
            return part(x.real) + ("" if imag.startswith("-") else "+") + imag + "i"

        return complex_
    if dtype == "bf16":
        return _format_bfloat16
    if dtype == "f64":
        return _format_float
    return _format_float_np


def _format_float(x: Any) -> str:
    """An f64 as Python's shortest repr, with Nx's spellings for the non-finite."""
    s = repr(float(x))
    return _NX_SPELLING.get(s, s)


def _format_float_np(x: Any) -> str:
    """An f16 or f32: numpy finds the shortest digits at that precision, Python lays them out."""
    if not numpy.isfinite(x):
        return _format_float(x)
    return repr(float(numpy.format_float_scientific(x, unique=True)))


def _format_bfloat16(x: Any) -> str:
    """A bf16: the fewest significant digits that read back to the same bf16 value."""
    value = float(x)
    if not math.isfinite(value):
        return _format_float(value)
    for digits in range(1, 10):  # 9 significant digits always suffice (they do for f32)
        s = f"{value:.{digits - 1}e}"
        if ml_dtypes.bfloat16(float(s)) == x:
            return repr(float(s))
    return repr(value)
