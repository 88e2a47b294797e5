"""GenServer start, call, cast, reply and info (docs/architecture.md "OTP behaviours").

One behaviour per test, named for it, in the spirit of OTP's gen_server_SUITE. Every test
runs its own node; waits are bounded and synchronised on messages and monitors, never sleeps.
Servers report what happened to an observer pid given to `init`, so each test can check the
order of events, not only the end state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from actor_helpers import WAIT, down_of

import numbeam as nb


class Counter(nb.GenServer):
    """Counts; replies to "get"; crashes on the "crash" cast."""

    async def init(self, start: int = 0) -> None:
        self.n = start

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "get":
            return self.n
        if request == "incr":
            self.n += 1
            return self.n
        raise ValueError(f"unexpected call {request!r}")

    async def handle_cast(self, request: Any) -> None:
        if request == "incr":
            self.n += 1
        elif request == "crash":
            raise ValueError("counter crashed on purpose")


class Observed(nb.GenServer):
    """Forwards what it sees to an observer and can defer its replies."""

    async def init(self, observer: nb.Pid) -> None:
        self.observer = observer
        self.parked: Any = None

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "park":
            self.parked = caller
            nb.send(self.observer, "parked")
            return nb.NOREPLY
        if request == "park_until_timer":
            self.parked = caller
            nb.send_after(0.001, nb.self(), "timer_fired")
            return nb.NOREPLY
        if request == "exit_before_reply":
            raise nb.Stop("gone")
        if request == "call_myself":
            try:
                await nb.call(nb.self(), "get", timeout=WAIT)
            except RuntimeError as e:
                return ("refused", type(e).__name__)
            return "no error"
        if isinstance(request, tuple) and request[0] == "monitor":
            nb.monitor(request[1])
            return "ok"
        return ("echo", request)

    async def handle_cast(self, request: Any) -> None:
        if isinstance(request, tuple) and request[0] == "release":
            nb.reply(self.parked, request[1])
            self.parked = None
        else:
            nb.send(self.observer, ("cast", request))

    async def handle_info(self, msg: Any) -> None:
        if msg == "timer_fired" and self.parked is not None:
            nb.reply(self.parked, "woken by timer")
            self.parked = None
        nb.send(self.observer, ("info", msg))


# -- start -------------------------------------------------------------------------------------


class ReportsInit(nb.GenServer):
    async def init(self, observer: nb.Pid) -> None:
        nb.send(observer, ("init_done", nb.self()))


async def test_start_link_waits_for_init_and_returns_the_pid() -> None:
    async with nb.Runtime():
        pid = await ReportsInit.start_link(nb.self())
        assert isinstance(pid, nb.Pid)
        # init's message is already here when start_link returns: it waited for init.
        assert await nb.receive(timeout=0) == ("init_done", pid)
        assert nb.is_alive(pid)


async def test_state_lives_on_self() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link(10)
        assert await nb.call(pid, "incr", timeout=WAIT) == 11
        assert await nb.call(pid, "incr", timeout=WAIT) == 12
        assert await nb.call(pid, "get", timeout=WAIT) == 12


async def test_name_registers_the_server() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link(5, name="counter")
        assert nb.whereis("counter") == pid
        assert nb.process_info(pid)["registered_name"] == "counter"
        assert await nb.call("counter", "get", timeout=WAIT) == 5


async def test_start_with_a_taken_name_raises_already_started() -> None:
    async with nb.Runtime():
        first = await Counter.start_link(name="counter")
        with pytest.raises(nb.StartError) as info:
            await Counter.start_link(name="counter")
        assert info.value.reason == ("already_started", first)
        assert nb.whereis("counter") == first


async def test_start_link_links_the_server_to_the_caller() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link()
        assert nb.self() in nb.process_info(pid)["links"]
        assert pid in nb.process_info(nb.self())["links"]


async def test_start_does_not_link_the_server(crash_log: pytest.LogCaptureFixture) -> None:
    async with nb.Runtime():
        pid = await Counter.start()
        assert nb.process_info(pid)["links"] == []
        ref = nb.monitor(pid)
        nb.cast(pid, "crash")
        down = await down_of(ref)
        assert isinstance(down.reason, ValueError)
        # The caller does not trap exits and still runs: no link carried the crash.
        assert nb.process_info(nb.self())["trap_exit"] is False
        pong = nb.spawn(_echo_once)
        nb.send(pong, nb.self())
        assert await nb.receive(timeout=WAIT) == "pong"


async def _echo_once() -> None:
    sender = await nb.receive(timeout=WAIT)
    nb.send(sender, "pong")


async def _start_link_then_wait(parent: nb.Pid) -> None:
    pid = await Counter.start_link()
    nb.send(parent, ("server", pid))
    await nb.receive(timeout=WAIT)


async def test_server_crash_kills_a_linked_non_trapping_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        caller, ref = nb.spawn_monitor(_start_link_then_wait, nb.self())
        _, server = await nb.receive(timeout=WAIT)
        nb.cast(server, "crash")
        down = await down_of(ref)
        assert down.pid == caller
        assert isinstance(down.reason, ValueError)
        assert str(down.reason) == "counter crashed on purpose"


async def test_server_crash_sends_exit_to_a_linked_trapping_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = await Counter.start_link()
        nb.cast(pid, "crash")
        msg = await nb.receive(nb.Exit, timeout=WAIT)
        assert msg.pid == pid
        assert isinstance(msg.reason, ValueError)


class FailingInit(nb.GenServer):
    async def init(self, error: BaseException) -> None:
        raise error


async def test_init_raising_raises_start_error_caused_by_the_exception(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        error = KeyError("missing config")
        with pytest.raises(nb.StartError) as info:
            await FailingInit.start_link(error)
        assert info.value.reason is error
        assert info.value.__cause__ is error


async def _start_failing_and_report(parent: nb.Pid) -> None:
    try:
        await FailingInit.start_link(KeyError("missing config"))
    except nb.StartError as e:
        nb.send(parent, ("start_error", e.reason))


async def test_init_failure_does_not_kill_the_linked_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        caller, ref = nb.spawn_monitor(_start_failing_and_report, nb.self())
        tag, reason = await nb.receive(lambda m: isinstance(m, tuple), timeout=WAIT)
        assert tag == "start_error"
        assert isinstance(reason, KeyError)
        down = await down_of(ref)
        assert (down.pid, down.reason) == (caller, "normal")


async def test_init_raising_stop_raises_start_error_with_that_reason() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.StartError) as info:
            await FailingInit.start_link(nb.Stop(("bad_config", 3)))
        assert info.value.reason == ("bad_config", 3)
        assert nb.process_info(nb.self())["links"] == []


async def test_init_failure_leaves_no_exit_message_in_a_trapping_caller(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        with pytest.raises(nb.StartError):
            await FailingInit.start_link(KeyError("missing config"))
        assert nb.process_info(nb.self())["message_queue_len"] == 0


class WaitsInInit(nb.GenServer):
    async def init(self, killer: nb.Pid) -> None:
        nb.send(killer, nb.self())
        await nb.receive(timeout=WAIT)


async def _kill_whoever_reports() -> None:
    nb.exit(await nb.receive(timeout=WAIT), "kill")


async def test_server_killed_during_init_raises_start_error() -> None:
    async with nb.Runtime():
        killer = nb.spawn(_kill_whoever_reports)
        with pytest.raises(nb.StartError) as info:
            await WaitsInInit.start(killer)
        assert info.value.reason == "killed"


async def test_start_arguments_to_a_server_without_init_raise_type_error() -> None:
    class NoInit(nb.GenServer):
        pass

    async with nb.Runtime():
        before = nb.processes()
        with pytest.raises(TypeError, match="does not define init"):
            await NoInit.start_link(1, 2)
        assert nb.processes() == before


async def test_an_unknown_keyword_to_start_link_is_a_type_error_naming_it() -> None:
    class Takes(nb.GenServer):
        async def init(self, start: int, *, step: int = 1) -> None:
            self.n = start

    async with nb.Runtime():
        before = nb.processes()
        with pytest.raises(TypeError, match="stpe") as info:
            await Takes.start_link(0, stpe=2)
        assert "Takes.start_link()" in str(info.value)
        assert not isinstance(info.value, nb.StartError)
        with pytest.raises(TypeError, match="start"):
            await Takes.start(step=2)  # the positional argument is missing
        assert nb.processes() == before  # nothing was spawned
        pid = await Takes.start_link(0, step=2)
        assert nb.is_alive(pid)


# -- call, cast, reply, info -------------------------------------------------------------------


async def test_handle_call_return_value_is_the_reply() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        assert await nb.call(pid, {"q": 1}, timeout=WAIT) == ("echo", {"q": 1})


async def test_noreply_then_reply_from_handle_info_after_a_timer() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        assert await nb.call(pid, "park_until_timer", timeout=WAIT) == "woken by timer"
        assert await nb.receive(timeout=WAIT) == ("info", "timer_fired")


async def _call_and_report(parent: nb.Pid, server: nb.Pid, request: Any) -> None:
    nb.send(parent, ("result", await nb.call(server, request, timeout=WAIT)))


async def test_noreply_then_reply_to_the_stored_caller_on_a_later_cast() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        nb.spawn(_call_and_report, nb.self(), pid, "park")
        assert await nb.receive(timeout=WAIT) == "parked"
        nb.cast(pid, ("release", 42))
        assert await nb.receive(timeout=WAIT) == ("result", 42)


async def test_handle_cast_runs_in_order_with_calls() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link()
        for _ in range(3):
            nb.cast(pid, "incr")
        assert await nb.call(pid, "get", timeout=WAIT) == 3


async def test_cast_to_an_unregistered_name_is_silent() -> None:
    async with nb.Runtime():
        nb.cast("nobody", "hello")
        assert nb.whereis("nobody") is None


async def test_handle_info_receives_plain_messages() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        nb.send(pid, ("plain", 1))
        assert await nb.receive(timeout=WAIT) == ("info", ("plain", 1))


async def test_handle_info_receives_down_from_a_monitor() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        target = nb.spawn(_wait_for_message)
        assert await nb.call(pid, ("monitor", target), timeout=WAIT) == "ok"
        nb.send(target, "go")  # the target returns normally
        tag, down = await nb.receive(timeout=WAIT)
        assert tag == "info"
        assert isinstance(down, nb.Down)
        assert (down.pid, down.reason) == (target, "normal")


async def _wait_for_message() -> None:
    await nb.receive(timeout=WAIT)


async def test_handle_info_receives_send_after_timers() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        nb.send_after(0.001, pid, "tick")
        assert await nb.receive(timeout=WAIT) == ("info", "tick")


async def test_reply_rejects_something_that_is_not_a_caller() -> None:
    async with nb.Runtime():
        with pytest.raises(TypeError, match="caller"):
            nb.reply("not a caller", 1)  # type: ignore[arg-type]


async def test_reply_to_a_caller_that_died_is_dropped() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        caller, ref = nb.spawn_monitor(_call_and_report, nb.self(), pid, "park")
        assert await nb.receive(timeout=WAIT) == "parked"
        nb.exit(caller, "kill")
        assert (await down_of(ref)).reason == "killed"
        nb.cast(pid, ("release", "nobody listens"))
        assert await nb.call(pid, "ping", timeout=WAIT) == ("echo", "ping")


async def test_unexpected_message_without_handle_info_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="numbeam")
    async with nb.Runtime():
        pid = await Counter.start_link(3)
        nb.send(pid, "stray")
        assert await nb.call(pid, "get", timeout=WAIT) == 3
    assert any("stray" in r.getMessage() for r in caplog.records if r.name == "numbeam")


# -- call failures -----------------------------------------------------------------------------


async def test_call_timeout_raises_timeout_error() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        with pytest.raises(TimeoutError):
            await nb.call(pid, "park", timeout=0.01)
        assert nb.is_alive(pid)


async def test_late_reply_after_a_call_timeout_is_dropped() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        with pytest.raises(TimeoutError):
            await nb.call(pid, "park", timeout=0.01)
        assert await nb.receive(timeout=WAIT) == "parked"
        nb.cast(pid, ("release", "too late"))
        # The server handles the cast (and its late reply) before this call.
        assert await nb.call(pid, "sync", timeout=WAIT) == ("echo", "sync")
        assert nb.process_info(nb.self())["message_queue_len"] == 0
        with pytest.raises(TimeoutError):
            await nb.receive(timeout=0)


async def test_call_cancelled_by_an_enclosing_timeout_drops_the_late_reply() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await nb.call(pid, "park", timeout=None)
        assert await nb.receive(timeout=WAIT) == "parked"
        nb.cast(pid, ("release", "too late"))
        assert await nb.call(pid, "sync", timeout=WAIT) == ("echo", "sync")
        assert nb.process_info(nb.self())["message_queue_len"] == 0
        assert nb.process_info(nb.self())["monitors"] == []


async def test_call_to_a_dead_pid_raises_noproc() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link()
        await nb.stop(pid, timeout=WAIT)
        with pytest.raises(nb.NoProc):
            await nb.call(pid, "get", timeout=WAIT)


async def test_call_to_an_unregistered_name_raises_noproc() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.NoProc):
            await nb.call("nobody", "get", timeout=WAIT)


async def test_call_when_the_server_exits_before_replying_raises_call_error() -> None:
    async with nb.Runtime():
        pid = await Observed.start(nb.self())
        with pytest.raises(nb.CallError) as info:
            await nb.call(pid, "exit_before_reply", timeout=WAIT)
        assert info.value.reason == "gone"
        assert not nb.is_alive(pid)
        assert nb.process_info(nb.self())["message_queue_len"] == 0


async def test_call_when_the_server_crashes_raises_call_error_with_the_exception(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        pid = await Counter.start()
        with pytest.raises(nb.CallError) as info:
            await nb.call(pid, "unknown request", timeout=WAIT)
        assert isinstance(info.value.reason, ValueError)


async def test_call_by_name_and_node() -> None:
    async with nb.Runtime():
        await Counter.start_link(7, name="counter")
        assert await nb.call(("counter", nb.node()), "get", timeout=WAIT) == 7


async def test_call_to_an_unknown_node_raises_noproc() -> None:
    async with nb.Runtime():
        await Counter.start_link(name="counter")
        with pytest.raises(nb.NoProc):
            await nb.call(("counter", "elsewhere@nohost"), "get", timeout=WAIT)


async def test_call_to_itself_raises_runtime_error() -> None:
    async with nb.Runtime():
        pid = await Observed.start_link(nb.self())
        assert await nb.call(pid, "call_myself", timeout=WAIT) == ("refused", "RuntimeError")


async def test_call_with_a_negative_timeout_raises_value_error() -> None:
    async with nb.Runtime():
        pid = await Counter.start_link()
        with pytest.raises(ValueError, match="timeout"):
            await nb.call(pid, "get", timeout=-1)
