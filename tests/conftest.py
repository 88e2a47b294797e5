"""Shared test helpers. Every test runs its own node with `async with nb.Runtime():`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def crash_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture numbeam's crash reports (logger "numbeam")."""
    caplog.set_level(logging.ERROR, logger="numbeam")
    return caplog


def _run_pure_python(*args: str, timeout: float = 240) -> str:
    """Run pytest with ``args`` in a subprocess with NUMBEAM_PURE_PYTHON=1 (no C extension is
    used, in it and in the nodes it starts); assert it passed; its output."""
    env = {**os.environ, "NUMBEAM_PURE_PYTHON": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    return proc.stdout


@pytest.fixture
def pure_python_pytest() -> Callable[..., str]:
    """``pure_python_pytest(*pytest_args)``: those tests again, without the C extensions."""
    return _run_pure_python
