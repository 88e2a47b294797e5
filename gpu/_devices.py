"""Device names, discovery, and the device this OS process runs on.

A device is ``"cuda:N"`` (a CUDA GPU, through CuPy) or ``"fake:N"`` (a CPU-backed stand-in that
runs the same machinery, for CI and laptops); ``"cpu"`` is the node itself. Which devices a
runtime drives is decided when it starts (`discover`), never at import: ``devices="auto"`` is
every CUDA device CuPy sees plus ``fake:0..N-1`` when ``NUMBEAM_FAKE_DEVICES=N``.

Nothing here imports CuPy unless CUDA devices are asked for: the plain install never touches it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any

__all__ = [
    "CPU",
    "check_device",
    "current",
    "discover",
    "known",
    "parse_device",
    "set_current",
    "set_known",
]

log = logging.getLogger("numbeam")

CPU = "cpu"
_NAME = re.compile(r"(cuda|fake):(0|[1-9][0-9]{0,3})\Z")

# The device this OS process is the worker of ("cpu" in a node that is not a worker).
_current = CPU
# The devices of the running runtime (None: no runtime has said; discover from the environment).
_known: list[str] | None = None


def parse_device(name: Any) -> tuple[str, int]:
    """``("cuda", 1)`` for ``"cuda:1"``, ``("fake", 0)`` for ``"fake:0"``, ``("cpu", 0)`` for
    ``"cpu"``; TypeError for a non-str, ValueError for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"a device is a str such as 'cuda:0', 'fake:0' or 'cpu', got {name!r}")
    if name == CPU:
        return CPU, 0
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"bad device name {name!r}: devices are named 'cuda:N', 'fake:N' or 'cpu'")
    return m.group(1), int(m.group(2))


def _fake_count() -> int:
    raw = os.environ.get("NUMBEAM_FAKE_DEVICES", "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"bad value in NUMBEAM_FAKE_DEVICES: {raw!r} (a number of fake devices)"
        ) from None
    if not 0 <= n <= 64:
        raise ValueError(f"NUMBEAM_FAKE_DEVICES must be between 0 and 64, got {n}")
    return n


@functools.cache
def cuda_count() -> int:
    """How many CUDA devices CuPy sees; 0 without CuPy, a driver or a GPU (said at debug level:
    a machine without CUDA is the ordinary case, not a problem). Asked once per OS process."""
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError:
        log.debug("devices: CuPy is not installed, so no CUDA devices")
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:  # no driver, no device: CUDA raises its own error types
        log.debug("devices: CUDA reports no usable device (%s)", e)
        return 0


def discover(option: Any) -> list[str]:
    """The device list for the node option ``devices``: ``"auto"``, a list of names, or None /
    ``[]`` for none. Duplicates and bad names raise ValueError."""
    if option is None:
        return []
    if isinstance(option, str):
        if option != "auto":
            raise ValueError(
                f"devices must be 'auto', a list of device names or [], got {option!r}"
            )
        n = cuda_count()
        found = [f"cuda:{i}" for i in range(n)]
        return found + [f"fake:{i}" for i in range(_fake_count())]
    if not isinstance(option, (list, tuple)):
        raise TypeError(f"devices must be 'auto', a list of device names or [], got {option!r}")
    names: list[str] = []
    for name in option:
        kind, _ = parse_device(name)
        if kind == CPU:
            raise ValueError("'cpu' is the node itself, not one of its devices")
        if name in names:
            raise ValueError(f"device {name!r} is listed twice")
        names.append(name)
    if any(n.startswith("cuda:") for n in names):
        count = cuda_count()
        missing = [n for n in names if n.startswith("cuda:") and parse_device(n)[1] >= count]
        if missing:
            raise ValueError(
                f"no such CUDA device: {', '.join(missing)} (CuPy sees {count} device(s))"
            )
    return names


def current() -> str:
    """The device of this OS process: its worker's device, or ``"cpu"``."""
    return _current


def set_current(device: str) -> None:
    global _current
    parse_device(device)
    _current = device


def known() -> list[str]:
    """The devices tensors may be made on here: the runtime's devices (and this worker's own),
    or, with no runtime running, those the environment names."""
    devs = list(_known) if _known is not None else discover("auto")
    if _current != CPU and _current not in devs:
        devs.append(_current)
    return devs


def set_known(devices: list[str] | None) -> None:
    global _known
    _known = None if devices is None else list(devices)


def check_device(device: Any) -> str:
    """``device`` if this node has it (``"cpu"`` always); ValueError naming the ones it has."""
    kind, _ = parse_device(device)
    if kind == CPU:
        return CPU
    devs = known()
    if device not in devs:
        there = ", ".join(["cpu", *devs])
        raise ValueError(f"unknown device {device!r}; this node has: {there}")
    return device  # type: ignore[no-any-return]
