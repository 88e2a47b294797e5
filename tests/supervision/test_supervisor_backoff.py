"""Opt-in restart backoff: a child that keeps exiting soon after its start is restarted after
growing delays (exponential, capped, per child) that do not count against the intensity, so
the supervisor outlives an outage; without backoff, OTP's behaviour stays the default."""

from __future__ import annotations

import inspect
import logging

import pytest
from numbeam.supervision._policy import backoff_delay, check_backoff

import numbeam as nb

T = 10.0


# -- the policy, without a runtime -------------------------------------------------------------


def test_backoff_delay_is_immediate_first_then_doubles_up_to_the_cap():
    delays = [backoff_delay(n, (0.1, 1.0)) for n in range(7)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_no_backoff_never_delays():
    assert [backoff_delay(n, None) for n in range(5)] == [0.0] * 5


def test_a_huge_streak_stays_at_the_cap():
    assert backoff_delay(10_000, (0.5, 30.0)) == 30.0


@pytest.mark.parametrize(
    ("backoff", "error"),
    [
        ((0.0, 1.0), ValueError),
        ((2.0, 1.0), ValueError),
        ((0.1, float("inf")), ValueError),
        ([0.1, 1.0], TypeError),
        ((0.1,), TypeError),
        (("0.1", 1.0), TypeError),
        (0.5, TypeError),
    ],
)
def test_a_bad_backoff_is_refused(backoff, error):
    with pytest.raises(error, match="backoff"):
        check_backoff(backoff)


async def test_start_link_refuses_a_bad_backoff_before_starting():
    async with nb.Runtime():
        with pytest.raises(ValueError, match="backoff"):
            await nb.Supervisor.start_link([], backoff=(1.0, 0.5))


def test_start_link_signatures_show_their_options():
    sup = inspect.signature(nb.Supervisor.start_link).parameters
    assert list(sup) == [
        "children",
        "strategy",
        "intensity",
        "period",
        "backoff",
        "name",
        "node",
        "device",
    ]
    dyn = inspect.signature(nb.DynamicSupervisor.start_link).parameters
    assert list(dyn) == ["max_children", "intensity", "period", "name", "node", "device"]


# -- a supervisor with backoff -----------------------------------------------------------------


async def crash_until(report_to: nb.Pid, crashes: list[int], n: int) -> None:
    """Reports its start, then crashes at once, `n` times in all (counted in `crashes`)."""
    nb.send(report_to, ("started", nb.self()))
    if len(crashes) < n:
        crashes.append(1)
        raise nb.Stop("noconnection")  # as a child on a lost node ends
    await nb.receive(lambda m: False)


async def test_with_backoff_a_crash_looping_child_does_not_exhaust_the_supervisor(caplog):
    caplog.set_level(logging.INFO, logger="numbeam")
    n = 8
    async with nb.Runtime():
        crashes: list[int] = []
        child = nb.Child(crash_until, args=(nb.self(), crashes, n), id="w")
        sup = await nb.Supervisor.start_link([child], intensity=1, period=5.0, backoff=(0.01, 0.05))
        pids = [(await nb.receive(lambda m: m[0] == "started", timeout=T))[1] for _ in range(n + 1)]
        assert len(set(pids)) == n + 1 and crashes == [1] * n
        assert nb.is_alive(sup)
        assert await nb.Supervisor.which_children(sup) == [("w", pids[-1], "worker")]
        assert "restarted after a backoff" in caplog.text
        await nb.stop(sup, timeout=T)


async def test_without_backoff_the_same_child_exhausts_the_supervisor(caplog):
    caplog.set_level(logging.CRITICAL, logger="numbeam")
    async with nb.Runtime():
        nb.trap_exit(True)
        crashes: list[int] = []
        child = nb.Child(crash_until, args=(nb.self(), crashes, 8), id="w")
        sup = await nb.Supervisor.start_link([child], intensity=1, period=5.0)
        exit_msg = await nb.receive(lambda m: type(m) is nb.Exit and m.pid == sup, timeout=T)
        assert exit_msg.reason == "shutdown"
        assert len(crashes) == 2  # the first restart, then the second exceeds intensity 1
