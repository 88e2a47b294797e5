"""Inputs into batches and outputs back into rows: numpy arrays, numbeam tensors, and tuples or
dicts of them, stacked on a new axis 0 field by field, and split row by row.

Each input gets a *signature* (its structure, shapes and dtypes) when it arrives, so that the
batcher can stack only inputs that fit together and fail an odd one alone with an error that
says what it expected. Stacking makes one contiguous array per field; a batch bound for a
device worker is put in that device's memory here, so the worker receives it as a handle to
memory already there. Rows handed back are views of the output, one per caller.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numbeam.tensors import Tensor, build, from_dlpack, tensor

__all__ = ["describe", "portable", "signature", "split", "stack"]

_SCALARS = (bool, int, float, complex, np.generic)


def signature(x: Any, where: str = "input") -> tuple[Hashable, Any]:
    """``(signature, value)`` of one input; the value with Python scalars made numpy arrays.

    Raises:
        TypeError: `x` is not an array, tensor, scalar, or tuple/dict of those.
    """
    if isinstance(x, np.ndarray):
        return ("array", x.shape, x.dtype.str), x
    if isinstance(x, Tensor):
        return ("tensor", x.shape, x.dtype, x.device), x
    if isinstance(x, _SCALARS):
        a = np.asarray(x)
        return ("array", (), a.dtype.str), a
    if isinstance(x, tuple):
        parts = [signature(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return ("tuple", tuple(s for s, _ in parts)), tuple(v for _, v in parts)
    if isinstance(x, dict):
        keys = sorted(x)  # TypeError for mixed key types, checked just below anyway
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"nb.serving: the keys of a dict {where} must be str, got {keys!r}")
        parts = [signature(x[k], f"{where}[{k!r}]") for k in keys]
        sig = ("dict", tuple(zip(keys, (s for s, _ in parts), strict=True)))
        return sig, {k: v for k, (_, v) in zip(keys, parts, strict=True)}
    raise TypeError(
        f"nb.serving: {where} is a {type(x).__qualname__}; an input is a numpy array, an "
        f"nb.Tensor, a number, or a tuple or dict (str keys) of those (np.asarray(x) for a list)"
    )


def describe(sig: Any) -> str:
    """``f32[3, 4]``-style text of a signature, for error messages."""
    kind = sig[0]
    if kind == "array":
        _, shape, dt = sig
        return f"array {np.dtype(dt).name}{list(shape)}"
    if kind == "tensor":
        _, shape, dt, device = sig
        return f"tensor {dt}{list(shape)} on {device}"
    if kind == "tuple":
        return "(" + ", ".join(describe(s) for s in sig[1]) + ")"
    return "{" + ", ".join(f"{k!r}: {describe(s)}" for k, s in sig[1]) + "}"


def _host(t: Tensor) -> np.ndarray:
    return t.numpy() if t.device == "cpu" else t.to("cpu").numpy()  # type: ignore[no-any-return]


def stack(values: Sequence[Any], sig: Any, device: str | None = None) -> Any:
    """The inputs `values` (all of signature `sig`) stacked on a new axis 0, field by field:
    a numpy array for arrays, a tensor for tensors; on `device`, tensors in its memory."""
    kind = sig[0]
    if kind == "tuple":
        return tuple(stack([v[i] for v in values], s, device) for i, s in enumerate(sig[1]))
    if kind == "dict":
        return {k: stack([v[k] for v in values], s, device) for k, s in sig[1]}
    if kind == "array":
        batch = np.stack(values)
        return batch if device is None else tensor(batch, device=device)
    hosts = [_host(v) for v in values]
    if device is None:
        _, shape, dt, _ = sig
        return build((len(hosts), *shape), dt, lambda out: np.stack(hosts, out=out))
    return tensor(np.stack(hosts), device=device)


def portable(out: Any) -> Any:
    """`out` with device arrays (CuPy, torch: anything with ``__dlpack__`` that is not numpy)
    made tensors, so that it can cross to another process."""
    if isinstance(out, (np.ndarray, Tensor, *_SCALARS)):
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(portable(v) for v in out)
    if isinstance(out, dict):
        return {k: portable(v) for k, v in out.items()}
    if hasattr(out, "__dlpack__"):
        return from_dlpack(out)
    return out


def split(out: Any, n: int) -> list[Any]:
    """The rows of `out`, what `predict` returned for a batch of `n`: one per input, in order.

    Raises:
        ValueError: `out` (or one of its fields) does not have `n` rows.
        TypeError: `out` is not an array, tensor, or tuple/list/dict of those.
    """
    if isinstance(out, Tensor):
        out = _host(out)
    if isinstance(out, np.ndarray):
        if out.ndim == 0 or out.shape[0] != n:
            raise ValueError(
                f"nb.serving: predict returned an array of shape {out.shape} for a batch of "
                f"{n}; it must return one row per input (first axis of length {n})"
            )
        return list(out)
    if isinstance(out, (tuple, list)):
        fields = [split(v, n) for v in out]
        return [tuple(f[i] for f in fields) for i in range(n)]
    if isinstance(out, dict):
        keyed = {k: split(v, n) for k, v in out.items()}
        return [{k: rows[i] for k, rows in keyed.items()} for i in range(n)]
    if hasattr(out, "__dlpack__"):
        return split(from_dlpack(out), n)
    raise TypeError(
        f"nb.serving: predict returned a {type(out).__qualname__}; it must return an array, "
        f"an nb.Tensor, or a tuple or dict of those, with one row per input"
    )
