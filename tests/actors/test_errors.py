"""Wrong calls raise a clear error that names the problem (issue 2, "Done when")."""

from __future__ import annotations

import functools

import pytest

import numbeam as nb


def not_async_worker() -> None:
    return None


async def main() -> None:
    return None


class AsyncCallable:
    async def __call__(self, to: nb.Pid) -> None:
        nb.send(to, "called")


@pytest.mark.parametrize("spawn", [nb.spawn, nb.spawn_link, nb.spawn_monitor])
async def test_spawning_non_async_function_raises_type_error_naming_it(spawn: object) -> None:
    async with nb.Runtime():
        before = nb.processes()
        with pytest.raises(TypeError, match="async def") as info:
            spawn(not_async_worker)  # type: ignore[operator]
        assert "not_async_worker" in str(info.value)
        assert nb.processes() == before


async def test_spawning_non_callable_raises_type_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="async"):
            nb.spawn(42)  # type: ignore[arg-type]


async def test_spawning_async_callable_object_works() -> None:
    async with nb.Runtime():
        nb.spawn(AsyncCallable(), nb.self())
        assert await nb.receive(timeout=2) == "called"


async def test_spawning_partial_of_async_function_works() -> None:
    async with nb.Runtime():
        nb.spawn(functools.partial(AsyncCallable().__call__, nb.self()))
        assert await nb.receive(timeout=2) == "called"


def test_run_of_non_async_function_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="not_async_worker"):
        nb.run(not_async_worker)  # type: ignore[arg-type]


async def test_receive_negative_timeout_raises_value_error() -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "kept")
        with pytest.raises(ValueError, match="-1"):
            await nb.receive(timeout=-1)
        assert nb.process_info(nb.self())["message_queue_len"] == 1


async def test_receive_non_number_timeout_raises_type_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="timeout"):
            await nb.receive(timeout="1")  # type: ignore[arg-type]


async def test_send_after_negative_delay_raises_value_error() -> None:
    async with nb.Runtime() as rt:
        with pytest.raises(ValueError, match=r"-0\.5"):
            nb.send_after(-0.5, nb.self(), "never")
        assert rt.statistics()["timers"] == 0


@pytest.mark.parametrize("match", [42, "text", (int, "str"), ()])
async def test_receive_bad_match_raises_type_error(match: object) -> None:
    async with nb.Runtime():
        nb.send(nb.self(), "kept")
        with pytest.raises(TypeError, match="match"):
            await nb.receive(match, timeout=0)  # type: ignore[arg-type]
        assert nb.process_info(nb.self())["message_queue_len"] == 1


async def test_register_non_pid_raises_type_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="Pid"):
            nb.register("name", 1234)  # type: ignore[arg-type]


async def test_send_to_bad_destination_raises_type_error() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="destination"):
            nb.send(3.14, "msg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call",
    [
        lambda: nb.link("not a pid"),
        lambda: nb.unlink("not a pid"),
        lambda: nb.exit("not a pid", "kill"),
        lambda: nb.monitor(42),
        lambda: nb.demonitor("not a ref"),
        lambda: nb.cancel_timer("not a ref"),
        lambda: nb.trap_exit("yes"),
        lambda: nb.is_alive("not a pid"),
        lambda: nb.process_info("not a pid"),
        lambda: nb.send_after(1, 3.14, "msg"),
    ],
    ids=[
        "link",
        "unlink",
        "exit",
        "monitor",
        "demonitor",
        "cancel_timer",
        "trap_exit",
        "is_alive",
        "process_info",
        "send_after",
    ],
)
async def test_wrong_argument_type_raises_type_error(call: object) -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="takes"):
            call()  # type: ignore[operator]


async def test_unknown_node_option_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="bogus_option"):
        nb.Runtime(bogus_option=1)


def test_run_with_unknown_node_option_raises_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="bogus_option"):
        nb.run(main, bogus_option=1)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("run_queue_budget", 0),
        ("run_queue_budget", 1.5),
        ("shutdown_timeout", -1),
        ("shutdown_timeout", "5"),
    ],
)
async def test_bad_node_option_value_raises_value_error_naming_it(
    option: str, value: object
) -> None:
    with pytest.raises(ValueError, match=option):
        nb.Runtime(**{option: value})


async def test_non_bool_uvloop_option_raises_type_error() -> None:
    with pytest.raises(TypeError, match="uvloop"):
        nb.Runtime(uvloop="yes")


async def test_bad_node_option_environment_variable_raises_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NUMBEAM_RUN_QUEUE_BUDGET", "lots")
    with pytest.raises(ValueError, match="NUMBEAM_RUN_QUEUE_BUDGET"):
        nb.Runtime()


async def test_node_option_from_environment_variable_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NUMBEAM_SHUTDOWN_TIMEOUT", "1.5")
    assert nb.Runtime().options.shutdown_timeout == 1.5
    assert nb.Runtime(shutdown_timeout=2).options.shutdown_timeout == 2
