"""The Tensor object exists twice: a C type (the optional extension tensors/_ctensor.c, built
when a C compiler is there) and a pure-Python class. Both must behave the same: this runs the
tensor tests again on the pure-Python one."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numbeam.tensors import _tensor

import numbeam as nb

HERE = Path(__file__).resolve().parent


def test_the_c_tensor_is_not_tracked_by_the_garbage_collector() -> None:
    if _tensor._ctensor is None:
        pytest.skip("the C extension is not built here (no C compiler?)")
    small = nb.tensor(np.arange(256, dtype=np.float32))  # the C fast path
    large = nb.tensor(np.zeros(1 << 20, np.uint8))  # the Python path, same type
    inline = nb.tensor([1, 2])
    for t in (small, large, inline):
        assert type(t) is nb.Tensor
        assert not gc.is_tracked(t)
    assert small.numpy().tolist() == list(range(256))
    with pytest.raises(TypeError):
        nb.Tensor()
    with pytest.raises(TypeError):

        class Sub(nb.Tensor):  # type: ignore[misc]
            pass


def test_copying_a_tensor_gives_the_tensor() -> None:
    import copy

    t = nb.tensor(np.arange(300.0))
    assert copy.copy(t) is t
    assert copy.deepcopy({"t": t})["t"] is t


def test_the_c_fast_path_declines_what_it_does_not_handle() -> None:
    if _tensor._ctensor is None:
        pytest.skip("the C extension is not built here (no C compiler?)")
    small = _tensor._ctensor.small
    assert small(np.arange(4.0)) is None  # 32 bytes: inline, not the arena
    assert small(np.arange(512.0)[::2]) is None  # not contiguous
    assert small(np.arange(512.0).astype(">f8")) is None  # not native order
    assert small(np.zeros(1 << 20, np.uint8)) is None  # bigger than the arena's blocks
    assert small([1.0] * 100) is None  # not an array
    assert nb.tensor(np.zeros(512)) is not None  # (the size class has a chunk from now on)
    t = small(np.arange(512.0))
    assert t is not None and t.dtype == "f64" and t.numpy().sum() == 511 * 512 / 2


def test_the_tensor_tests_pass_on_the_pure_python_tensor_too(pure_python_pytest) -> None:
    pure_python_pytest(str(HERE), "--deselect", str(Path(__file__).relative_to(HERE.parent.parent)))


def test_pure_python_mode_really_uses_the_python_class() -> None:
    code = (
        "import gc, numpy as np, numbeam as nb\n"
        "from numbeam.tensors import _tensor\n"
        "t = nb.tensor(np.arange(256, dtype=np.float32))\n"
        "assert _tensor._ctensor is None and gc.is_tracked(t), 'the C tensor is in use'\n"
        "print(t.numpy().sum())\n"
    )
    env = {**os.environ, "NUMBEAM_PURE_PYTHON": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "32640.0"
