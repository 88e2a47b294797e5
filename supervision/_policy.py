"""Supervision policy: the decisions a supervisor makes, as plain functions with no I/O.

OTP keeps restart bookkeeping in one small function of timestamps (`add_restart(Restarts,
Now, Period)`) and the choice of whom to restart in a few `restart/3` clauses; everything
else in supervisor.erl is plumbing around them. We do the same: the supervisor process calls
these with `loop.time()` and its child list, and the tests call them with made-up times and
indices, without a runtime. Validation of supervisor flags lives here too, so `Supervisor` and
`DynamicSupervisor` reject a bad strategy or a negative intensity with one wording.
"""

from __future__ import annotations

import math
from itertools import takewhile
from typing import Any, Final, Literal

from numbeam.actors import is_normal_exit

__all__ = [
    "RESTARTS",
    "STRATEGIES",
    "Restart",
    "Shutdown",
    "Strategy",
    "add_restart",
    "backoff_delay",
    "check_backoff",
    "check_intensity",
    "check_max_children",
    "check_period",
    "check_strategy",
    "children_to_restart",
    "clean_shutdown",
    "intensity_exceeded",
    "should_restart",
]

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]
Shutdown = float | Literal["brutal_kill", "infinity"]

STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS: Final = ("permanent", "transient", "temporary")


def add_restart(restarts: tuple[float, ...], now: float, period: float) -> tuple[float, ...]:
    """Record a restart at time `now`: OTP's ``add_restart(Restarts, Now, Period)``.

    Args:
        restarts: the times of earlier restarts, newest first (what the last call returned).
        now: the time of this restart, in seconds on a monotonic clock.
        period: the supervisor's period in seconds.

    Returns:
        ``now`` followed by the earlier restarts that are still within `period` of it.
    """
    threshold = now - period
    return (now, *takewhile(lambda t: t >= threshold, restarts))


def intensity_exceeded(restarts: tuple[float, ...], intensity: int) -> bool:
    """True when `restarts` (from `add_restart`) holds more restarts than `intensity` allows."""
    return len(restarts) > intensity


def backoff_delay(streak: int, backoff: tuple[float, float] | None) -> float:
    """Seconds to wait before restarting a child that exited `streak` times in a row, each
    sooner than ``backoff[1]`` seconds after its start (opt-in restart backoff).

    The first restart of a streak is immediate (0.0, as OTP's), then ``initial``,
    ``2 * initial``, ``4 * initial``... capped at ``maximum``. Without backoff: always 0.0.
    """
    if backoff is None or streak <= 0:
        return 0.0
    initial, maximum = backoff
    return float(min(maximum, initial * 2.0 ** min(streak - 1, 64)))


def children_to_restart(strategy: Strategy, count: int, failed: int) -> range:
    """The indices (in start order) of the children to restart when child `failed` exits.

    ``one_for_one``: that child; ``one_for_all``: every child; ``rest_for_one``: that child
    and every child started after it. The caller terminates the others of the range in
    reverse order, then starts the whole range in order.
    """
    if not 0 <= failed < count:
        raise IndexError(f"child index {failed} is out of range for {count} children")
    if strategy == "one_for_one":
        return range(failed, failed + 1)
    if strategy == "one_for_all":
        return range(count)
    if strategy == "rest_for_one":
        return range(failed, count)
    check_strategy(strategy)
    raise AssertionError("unreachable")  # pragma: no cover


def should_restart(restart: Restart, reason: Any) -> bool:
    """Whether a child with restart type `restart` that exited with `reason` is restarted.

    ``permanent``: always; ``transient``: only after an abnormal exit (not ``"normal"``,
    ``"shutdown"`` or ``("shutdown", term)``); ``temporary``: never.
    """
    if restart == "permanent":
        return True
    if restart == "transient":
        return not is_normal_exit(reason)
    return False


def clean_shutdown(reason: Any, restart: Restart, shutdown: Shutdown) -> bool:
    """Whether a child stopped by its supervisor exited as expected (OTP's ``shutdown/2``).

    ``"shutdown"`` always is (``"killed"`` too when the child's shutdown is ``"brutal_kill"``);
    a child that is not permanent may also have exited ``"normal"`` or ``("shutdown", _)``
    on its own. Anything else is reported as a shutdown error.
    """
    if shutdown == "brutal_kill" and type(reason) is str and reason == "killed":
        return True
    if type(reason) is str and reason == "shutdown":
        return True
    return restart != "permanent" and is_normal_exit(reason)


# -- validation of supervisor flags --------------------------------------------------------


def check_strategy(strategy: Any) -> None:
    """Raise ValueError unless `strategy` is one of `STRATEGIES`."""
    if not (type(strategy) is str and strategy in STRATEGIES):
        raise ValueError(
            f"unknown supervisor strategy {strategy!r}: use one of {', '.join(STRATEGIES)}"
        )


def check_intensity(intensity: Any) -> None:
    """Raise unless `intensity` (the most restarts allowed per period) is an int >= 0."""
    if isinstance(intensity, bool) or not isinstance(intensity, int):
        raise TypeError(f"intensity must be an int (restarts per period), got {intensity!r}")
    if intensity < 0:
        raise ValueError(f"intensity must be >= 0 (restarts per period), got {intensity!r}")


def check_period(period: Any) -> None:
    """Raise unless `period` (the restart window in seconds) is a finite number > 0."""
    if isinstance(period, bool) or not isinstance(period, (int, float)):
        raise TypeError(f"period must be a number of seconds, got {period!r}")
    if not (period > 0 and math.isfinite(period)):
        raise ValueError(f"period must be a finite number of seconds > 0, got {period!r}")


def check_backoff(backoff: Any) -> None:
    """Raise unless `backoff` is None (OTP's immediate restarts) or ``(initial, maximum)``,
    seconds with ``0 < initial <= maximum``, both finite."""
    if backoff is None:
        return
    if not isinstance(backoff, tuple) or len(backoff) != 2:
        raise TypeError(
            f"backoff must be None or a tuple (initial, maximum) of seconds, got {backoff!r}"
        )
    for v in backoff:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"backoff must be a tuple of two numbers of seconds, got {backoff!r}")
    initial, maximum = backoff
    if not (0 < initial <= maximum and math.isfinite(maximum)):
        raise ValueError(
            f"backoff (initial, maximum) needs 0 < initial <= maximum, finite, got {backoff!r}"
        )


def check_max_children(max_children: Any) -> None:
    """Raise unless `max_children` is None (no limit) or an int >= 0."""
    if max_children is None:
        return
    if isinstance(max_children, bool) or not isinstance(max_children, int):
        raise TypeError(f"max_children must be an int or None (no limit), got {max_children!r}")
    if max_children < 0:
        raise ValueError(f"max_children must be >= 0 or None (no limit), got {max_children!r}")
