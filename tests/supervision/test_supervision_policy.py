"""Supervision policy as pure functions, and child-spec validation: no runtime needed.

Times are made up: restart intensity is a function of timestamps, so the period's edge is
tested exactly, without waiting for it.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest
from numbeam.supervision._policy import (
    add_restart,
    children_to_restart,
    clean_shutdown,
    intensity_exceeded,
    should_restart,
)

import numbeam as nb


class Server(nb.GenServer):
    pass


async def work(queue: str) -> None:
    pass


# -- restart intensity --------------------------------------------------------------------


def test_add_restart_records_now_first():
    assert add_restart((), 10.0, 5.0) == (10.0,)
    assert add_restart((10.0,), 11.0, 5.0) == (11.0, 10.0)


def test_add_restart_forgets_restarts_older_than_the_period():
    restarts = (14.0, 12.0, 9.0, 3.0)  # newest first
    assert add_restart(restarts, 15.0, 5.0) == (15.0, 14.0, 12.0)


def test_add_restart_keeps_a_restart_exactly_one_period_old():
    assert add_restart((10.0,), 15.0, 5.0) == (15.0, 10.0)


def test_intensity_is_exceeded_only_by_more_restarts_than_it_allows():
    restarts: tuple[float, ...] = ()
    for now in (1.0, 2.0, 3.0):
        restarts = add_restart(restarts, now, 5.0)
        assert not intensity_exceeded(restarts, 3)
    restarts = add_restart(restarts, 4.0, 5.0)
    assert intensity_exceeded(restarts, 3)


def test_restarts_spread_over_more_than_the_period_never_exceed_the_intensity():
    restarts: tuple[float, ...] = ()
    for now in range(0, 100, 6):  # one restart every 6 s, period 5 s
        restarts = add_restart(restarts, float(now), 5.0)
        assert not intensity_exceeded(restarts, 1)


def test_intensity_zero_allows_no_restart():
    assert intensity_exceeded(add_restart((), 0.0, 5.0), 0)


# -- strategy selection -------------------------------------------------------------------


def test_one_for_one_selects_only_the_failed_child():
    assert list(children_to_restart("one_for_one", 4, 2)) == [2]


def test_one_for_all_selects_every_child():
    assert list(children_to_restart("one_for_all", 4, 2)) == [0, 1, 2, 3]


def test_rest_for_one_selects_the_failed_child_and_those_started_after_it():
    assert list(children_to_restart("rest_for_one", 4, 1)) == [1, 2, 3]
    assert list(children_to_restart("rest_for_one", 4, 3)) == [3]


def test_children_to_restart_rejects_an_unknown_strategy():
    with pytest.raises(ValueError, match="simple_one_for_one"):
        children_to_restart("simple_one_for_one", 2, 0)  # type: ignore[arg-type]


def test_children_to_restart_rejects_an_index_out_of_range():
    with pytest.raises(IndexError):
        children_to_restart("one_for_one", 2, 2)


# -- restart types --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["normal", "shutdown", ("shutdown", "done"), "killed", "boom"])
def test_permanent_is_always_restarted(reason):
    assert should_restart("permanent", reason)


@pytest.mark.parametrize("reason", ["normal", "shutdown", ("shutdown", "done")])
def test_transient_is_not_restarted_after_a_normal_exit(reason):
    assert not should_restart("transient", reason)


@pytest.mark.parametrize("reason", ["killed", "boom", ValueError("x"), ("shutdown",)])
def test_transient_is_restarted_after_an_abnormal_exit(reason):
    assert should_restart("transient", reason)


@pytest.mark.parametrize("reason", ["normal", "killed", ValueError("x")])
def test_temporary_is_never_restarted(reason):
    assert not should_restart("temporary", reason)


def test_clean_shutdown_reasons():
    assert clean_shutdown("shutdown", "permanent", 5.0)
    assert clean_shutdown("killed", "permanent", "brutal_kill")
    assert not clean_shutdown("killed", "permanent", 5.0)  # it had to be killed
    assert not clean_shutdown("normal", "permanent", 5.0)
    assert clean_shutdown("normal", "transient", 5.0)
    assert clean_shutdown(("shutdown", "x"), "temporary", "infinity")


# -- child specs ----------------------------------------------------------------------------


def test_child_defaults_for_a_worker():
    child = nb.Child(Server)
    assert child.id == "Server"
    assert child.args == ()
    assert dict(child.kwargs) == {}
    assert child.restart == "permanent"
    assert child.shutdown == 5.0
    assert child.type == "worker"


def test_child_defaults_for_a_supervisor():
    for sup in (nb.Supervisor, nb.DynamicSupervisor):
        child = nb.Child(sup)
        assert child.type == "supervisor"
        assert child.shutdown == "infinity"


def test_child_id_defaults_to_the_function_name():
    assert nb.Child(work, args=("q",)).id == "work"


def test_child_kwargs_are_a_read_only_copy():
    kwargs = {"strategy": "one_for_all"}
    child = nb.Child(nb.Supervisor, args=([],), kwargs=kwargs, id="sub")
    kwargs["strategy"] = "rest_for_one"
    assert child.kwargs == {"strategy": "one_for_all"}
    assert isinstance(child.kwargs, MappingProxyType)
    with pytest.raises(TypeError):
        child.kwargs["x"] = 1  # type: ignore[index]


def test_child_is_frozen():
    child = nb.Child(Server)
    with pytest.raises(dataclasses.FrozenInstanceError):
        child.restart = "temporary"  # type: ignore[misc]


def test_child_is_hashable_and_compares_by_value():
    assert nb.Child(work, args=("q",), kwargs={"x": 1}) == nb.Child(
        work, args=("q",), kwargs={"x": 1}
    )
    assert hash(nb.Child(work, args=("q",))) == hash(nb.Child(work, args=("q",)))


def test_child_args_list_becomes_a_tuple():
    assert nb.Child(work, args=["q"]).args == ("q",)


def test_child_infinite_seconds_mean_infinity():
    assert nb.Child(Server, shutdown=float("inf")).shutdown == "infinity"


def test_child_rejects_a_bad_restart_type():
    with pytest.raises(ValueError, match="restart must be one of permanent, transient, temporary"):
        nb.Child(Server, restart="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("shutdown", [-1, "soon", float("nan")])
def test_child_rejects_a_bad_shutdown_value(shutdown):
    with pytest.raises(ValueError, match="shutdown"):
        nb.Child(Server, shutdown=shutdown)


@pytest.mark.parametrize("shutdown", [True, [1]])
def test_child_rejects_a_shutdown_of_the_wrong_type(shutdown):
    with pytest.raises(TypeError, match="shutdown"):
        nb.Child(Server, shutdown=shutdown)


def test_child_rejects_a_bad_type():
    with pytest.raises(ValueError, match="'worker' or 'supervisor'"):
        nb.Child(Server, type="manager")  # type: ignore[arg-type]


def test_child_rejects_a_non_async_function():
    def blocking() -> None:
        pass

    with pytest.raises(TypeError, match="async function"):
        nb.Child(blocking)


def test_child_rejects_a_class_without_start_link():
    class Plain:
        pass

    with pytest.raises(TypeError, match="start_link"):
        nb.Child(Plain)


def test_child_rejects_args_that_are_not_a_tuple():
    with pytest.raises(TypeError, match="tuple of arguments"):
        nb.Child(work, args="q")


def test_child_rejects_kwargs_that_are_not_a_mapping():
    with pytest.raises(TypeError, match="mapping"):
        nb.Child(work, kwargs=[("queue", "q")])  # type: ignore[arg-type]


# -- supervisor flags, checked before anything starts -------------------------------------


async def test_start_link_rejects_an_unknown_strategy():
    with pytest.raises(ValueError, match="one_for_one, one_for_all, rest_for_one"):
        await nb.Supervisor.start_link([], strategy="one_for_some")


async def test_start_link_rejects_a_negative_intensity():
    with pytest.raises(ValueError, match="intensity"):
        await nb.Supervisor.start_link([], intensity=-1)


async def test_start_link_rejects_a_period_that_is_not_positive():
    with pytest.raises(ValueError, match="period"):
        await nb.Supervisor.start_link([], period=0)


async def test_start_link_rejects_children_that_are_not_child_specs():
    with pytest.raises(TypeError, match=r"nb\.Child"):
        await nb.Supervisor.start_link([Server])


async def test_start_link_rejects_children_that_are_not_a_list():
    with pytest.raises(TypeError, match=r"list of nb\.Child"):
        await nb.Supervisor.start_link(nb.Child(Server))  # type: ignore[arg-type]


async def test_start_link_rejects_duplicate_child_ids():
    with pytest.raises(ValueError, match="unique"):
        await nb.Supervisor.start_link([nb.Child(Server, id="a"), nb.Child(work, id="a")])


async def test_start_link_rejects_an_unknown_option():
    with pytest.raises(TypeError, match="stratgy"):
        await nb.Supervisor.start_link([], stratgy="one_for_all")


async def test_dynamic_start_link_rejects_a_negative_max_children():
    with pytest.raises(ValueError, match="max_children"):
        await nb.DynamicSupervisor.start_link(max_children=-1)
