"""nb.telemetry (DESIGN.md "Operating a live system") and the per-process counters of
process_info: events arrive with their documented measurements and metadata, a raising
handler is detached and logged without harming the emitter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from actor_helpers import WAIT, wait_forever

import numbeam as nb

SPAWN = ("numbeam", "process", "spawn")
EXIT = ("numbeam", "process", "exit")
RESTART = ("numbeam", "supervisor", "restart")


@pytest.fixture(autouse=True)
def no_handlers_left() -> Iterator[None]:
    yield
    for h in nb.telemetry.list_handlers():
        nb.telemetry.detach(h["id"])


def forward_to(pid: nb.Pid) -> Any:
    """A handler that sends each event to `pid` as ("tel", event, measurements, metadata)."""

    def handler(event: Any, measurements: Any, metadata: Any) -> None:
        nb.send(pid, ("tel", event, measurements, metadata))

    return handler


async def next_event(event: tuple[str, ...], **meta: Any) -> tuple[Any, ...]:
    msg = await nb.receive(
        lambda m: (
            type(m) is tuple
            and m[0] == "tel"
            and m[1] == event
            and all(m[3].get(k) == v for k, v in meta.items())
        ),
        timeout=WAIT,
    )
    return msg  # type: ignore[no-any-return]


async def exit_after_message() -> str:
    await nb.receive()
    return "done"


async def test_spawn_and_exit_events_carry_measurements_and_metadata() -> None:
    async with nb.Runtime():
        nb.telemetry.attach_many("t", [SPAWN, EXIT], forward_to(nb.self()))
        pid = nb.spawn(exit_after_message, name="short")
        _, _, m, md = await next_event(SPAWN, pid=pid)
        assert isinstance(m["system_time"], int) and m["system_time"] > 0
        assert md == {
            "pid": pid,
            "function": "exit_after_message",
            "name": "short",
            "node": nb.node(),
        }
        nb.send(pid, "go")
        _, _, m, md = await next_event(EXIT, pid=pid)
        assert m["duration"] > 0 and isinstance(m["system_time"], int)
        assert md["reason"] == "normal" and md["name"] == "short"
        assert md["function"] == "exit_after_message"


async def test_exit_event_reason_of_a_crash_and_a_kill(crash_log: Any) -> None:
    async def crash() -> None:
        raise ValueError("boom")

    async with nb.Runtime():
        nb.telemetry.attach("t", EXIT, forward_to(nb.self()))
        crashed = nb.spawn(crash)
        _, _, _, md = await next_event(EXIT, pid=crashed)
        assert isinstance(md["reason"], ValueError)
        victim = nb.spawn(wait_forever)
        nb.exit(victim, "kill")
        _, _, _, md = await next_event(EXIT, pid=victim)
        assert md["reason"] == "killed"


async def test_a_raising_handler_is_detached_and_logged(caplog: Any) -> None:
    caplog.set_level(logging.ERROR, logger="numbeam")
    calls = []

    def bad(event: Any, measurements: Any, metadata: Any) -> None:
        calls.append(event)
        raise RuntimeError("handler bug")

    async with nb.Runtime():
        nb.telemetry.attach("bad", SPAWN, bad)
        nb.telemetry.attach("good", SPAWN, forward_to(nb.self()))
        pid = nb.spawn(wait_forever)  # the emitter is not harmed
        assert nb.is_alive(pid)
        await next_event(SPAWN, pid=pid)  # the next handler still ran
        assert calls == [SPAWN]
        assert [h["id"] for h in nb.telemetry.list_handlers(("numbeam",))] == ["good"]
        nb.spawn(wait_forever)
        assert calls == [SPAWN]  # detached: not called again
    assert any("'bad'" in r.getMessage() and "detached" in r.getMessage() for r in caplog.records)


async def test_nothing_attached_means_nothing_emitted() -> None:
    from numbeam.actors import _telemetry

    async with nb.Runtime():
        nb.telemetry.attach("t", SPAWN, forward_to(nb.self()))
        assert nb.telemetry.detach("t") is True
        assert _telemetry.handlers == {}  # the emitters' only test
        nb.spawn(wait_forever)
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0.05)
    assert nb.telemetry.detach("t") is False


def test_bad_arguments_are_refused_with_clear_errors() -> None:
    def h(*a: Any) -> None:
        pass

    with pytest.raises(TypeError, match="tuple of non-empty str"):
        nb.telemetry.attach("x", "numbeam.process.exit", h)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuple of non-empty str"):
        nb.telemetry.attach("x", ("numbeam", ""), h)
    with pytest.raises(TypeError, match="callable"):
        nb.telemetry.attach("x", EXIT, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hashable"):
        nb.telemetry.attach(["x"], EXIT, h)
    nb.telemetry.attach("x", EXIT, h)
    with pytest.raises(ValueError, match="already attached"):
        nb.telemetry.attach("x", SPAWN, h)


class Crashy(nb.GenServer):
    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on purpose")


async def test_supervisor_restart_event(crash_log: Any) -> None:
    async with nb.Runtime():
        nb.telemetry.attach("t", RESTART, forward_to(nb.self()))
        sup = await nb.Supervisor.start_link([nb.Child(Crashy, id="crashy")], name="sup")
        [(_, child, _)] = await nb.Supervisor.which_children(sup)
        assert child is not None
        nb.cast(child, "crash")
        _, _, m, md = await next_event(RESTART, supervisor=sup)
        assert m["count"] == 1
        assert md["child_id"] == "crashy" and md["supervisor_name"] == "sup"
        [(_, new, _)] = await nb.Supervisor.which_children(sup)
        assert md["pid"] == new != child
        assert md["node"] == nb.node()


async def echo_twice() -> None:
    for _ in range(2):
        msg = await nb.receive()
        nb.send(msg, "pong")
    await nb.receive()


async def test_process_info_counts_messages_and_shows_the_current_function() -> None:
    async with nb.Runtime(process_counters=True):
        me = nb.self()
        before = nb.process_info(me)
        assert before is not None
        pid = nb.spawn(echo_twice)
        for _ in range(2):
            nb.send(pid, me)
            assert await nb.receive(timeout=WAIT) == "pong"
        info = nb.process_info(pid)
        assert info is not None
        assert info["messages_in"] == 2 and info["messages_out"] == 2
        assert info["current_function"].startswith("echo_twice (test_telemetry.py:")
        mine = nb.process_info(me)
        assert mine is not None
        assert mine["messages_out"] - before["messages_out"] == 2
        assert mine["messages_in"] - before["messages_in"] == 2
        assert mine["current_function"].startswith(
            "test_process_info_counts_messages_and_shows_the_current_function (test_telemetry.py:"
        )


async def test_messages_are_counted_only_while_the_node_counts() -> None:
    async with nb.Runtime() as rt:
        pid = nb.spawn(echo_twice)
        nb.send(pid, nb.self())
        await nb.receive(timeout=WAIT)
        info = nb.process_info(pid)
        assert info is not None
        assert info["messages_in"] is None and info["messages_out"] is None
        assert info["current_function"] is not None  # computed when asked: always there
        rt.count_messages()  # what an observer's first look does
        nb.send(pid, nb.self())
        await nb.receive(timeout=WAIT)
        info = nb.process_info(pid)
        assert info is not None
        assert info["messages_in"] == 1 and info["messages_out"] == 1
