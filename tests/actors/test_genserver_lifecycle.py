"""How a GenServer ends: Stop, crashes, nb.stop, exit signals and kill
(docs/architecture.md "OTP behaviours").

OTP's rules: `terminate` runs when the server stops itself, crashes, is stopped with
`nb.stop`, or (trapping exits) gets an exit signal from its parent; it does not run when an
untrapped exit signal or ``"kill"`` ends the process. Each test checks one of these through
what `terminate` reports to an observer and the reason a monitor sees. Since `terminate` runs
before the process exits, its report always precedes the `Down`, so "no report before the
Down" proves it did not run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from actor_helpers import WAIT, down_of

import numbeam as nb


class Reporter(nb.GenServer):
    """Reports ("terminate", reason) to its observer; stops or crashes on request."""

    async def init(self, observer: nb.Pid, trap: bool = False, block: Any = None) -> None:
        self.observer = observer
        self.block: asyncio.Event | None = block
        if trap:
            nb.trap_exit(True)

    async def handle_call(self, request: Any, caller: Any) -> Any:
        if request == "reply_then_stop":
            nb.reply(caller, "bye")
            raise nb.Stop("normal")
        return ("echo", request)

    async def handle_cast(self, request: Any) -> None:
        if isinstance(request, tuple) and request[0] == "stop":
            raise nb.Stop(request[1])
        if request == "crash":
            raise ValueError("reporter crashed on purpose")

    async def handle_info(self, msg: Any) -> None:
        nb.send(self.observer, ("info", msg))

    async def terminate(self, reason: Any) -> None:
        nb.send(self.observer, ("terminate", reason))
        if self.block is not None:
            await self.block.wait()


async def assert_no_terminate_report() -> None:
    with pytest.raises(TimeoutError):
        await nb.receive(lambda m: isinstance(m, tuple) and m[0] == "terminate", timeout=0)


# -- stopping from inside ----------------------------------------------------------------------


async def test_stop_in_a_callback_runs_terminate_then_exits_with_that_reason() -> None:
    async with nb.Runtime():
        pid = await Reporter.start(nb.self())
        ref = nb.monitor(pid)
        nb.cast(pid, ("stop", ("shutdown", "done")))
        assert await nb.receive(timeout=WAIT) == ("terminate", ("shutdown", "done"))
        down = await down_of(ref)
        assert down.reason == ("shutdown", "done")


async def test_stop_with_an_abnormal_reason_kills_a_linked_caller_with_it() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        pid = await Reporter.start_link(nb.self())
        nb.cast(pid, ("stop", "out_of_cheese"))
        assert await nb.receive(timeout=WAIT) == ("terminate", "out_of_cheese")
        assert await nb.receive(nb.Exit, timeout=WAIT) == nb.Exit(pid, "out_of_cheese")


async def test_reply_then_stop_delivers_the_reply() -> None:
    async with nb.Runtime():
        pid = await Reporter.start_link(nb.self())
        ref = nb.monitor(pid)
        assert await nb.call(pid, "reply_then_stop", timeout=WAIT) == "bye"
        assert await nb.receive(timeout=WAIT) == ("terminate", "normal")
        assert (await down_of(ref)).reason == "normal"


async def test_exception_in_a_callback_runs_terminate_with_the_exception(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        pid = await Reporter.start(nb.self())
        ref = nb.monitor(pid)
        nb.cast(pid, "crash")
        tag, reason = await nb.receive(timeout=WAIT)
        assert tag == "terminate"
        assert isinstance(reason, ValueError)
        down = await down_of(ref)
        assert down.reason is reason


async def test_exception_in_a_callback_logs_a_crash_report(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        pid = await Reporter.start(nb.self(), name="reporter")
        ref = nb.monitor(pid)
        nb.cast(pid, "crash")
        down = await down_of(ref)
    reports = [
        r
        for r in crash_log.records
        if r.name == "numbeam" and r.levelno == logging.ERROR and r.exc_info
    ]
    assert len(reports) == 1
    report = reports[0]
    assert report.exc_info is not None and report.exc_info[1] is down.reason
    assert repr(pid) in report.getMessage()
    assert "reporter" in report.getMessage()


# -- nb.stop -----------------------------------------------------------------------------------


async def test_stop_runs_terminate_and_waits_for_the_exit() -> None:
    async with nb.Runtime():
        pid = await Reporter.start_link(nb.self())
        await nb.stop(pid, timeout=WAIT)
        assert not nb.is_alive(pid)
        # terminate's report is already here: stop returned only after it ran.
        assert await nb.receive(timeout=0) == ("terminate", "normal")


async def test_stop_with_a_reason_exits_with_that_reason() -> None:
    async with nb.Runtime():
        pid = await Reporter.start(nb.self(), name="reporter")
        ref = nb.monitor(pid)
        await nb.stop("reporter", ("shutdown", "maintenance"), timeout=WAIT)
        assert await nb.receive(timeout=0) == ("terminate", ("shutdown", "maintenance"))
        assert (await down_of(ref)).reason == ("shutdown", "maintenance")


async def test_stop_of_a_dead_server_raises_noproc() -> None:
    async with nb.Runtime():
        pid = await Reporter.start_link(nb.self())
        await nb.stop(pid, timeout=WAIT)
        with pytest.raises(nb.NoProc):
            await nb.stop(pid, timeout=WAIT)


async def test_stop_of_an_unregistered_name_raises_noproc() -> None:
    async with nb.Runtime():
        with pytest.raises(nb.NoProc):
            await nb.stop("nobody", timeout=WAIT)


async def test_stop_timeout_raises_timeout_error() -> None:
    async with nb.Runtime():
        never = asyncio.Event()
        pid = await Reporter.start(nb.self(), block=never)
        ref = nb.monitor(pid)
        with pytest.raises(TimeoutError):
            await nb.stop(pid, timeout=0.01)
        assert await nb.receive(timeout=WAIT) == ("terminate", "normal")
        assert nb.is_alive(pid)
        nb.exit(pid, "kill")
        assert (await down_of(ref)).reason == "killed"


class FailingTerminate(nb.GenServer):
    async def terminate(self, reason: Any) -> None:
        raise RuntimeError("terminate failed")


async def test_stop_raises_call_error_when_the_server_exits_with_another_reason(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        pid = await FailingTerminate.start()
        with pytest.raises(nb.CallError) as info:
            await nb.stop(pid, timeout=WAIT)
        assert isinstance(info.value.reason, RuntimeError)
        assert not nb.is_alive(pid)


# -- exit signals ------------------------------------------------------------------------------


async def _parent_of_trapping_server(observer: nb.Pid) -> None:
    server = await Reporter.start_link(observer, trap=True)
    nb.send(observer, ("server", server))
    await nb.receive(timeout=WAIT)
    raise nb.Stop(("shutdown", "parent_done"))


async def test_trapping_server_terminates_on_its_parents_exit_signal() -> None:
    async with nb.Runtime():
        parent = nb.spawn(_parent_of_trapping_server, nb.self())
        _, server = await nb.receive(timeout=WAIT)
        ref = nb.monitor(server)
        nb.send(parent, "go")
        assert await nb.receive(timeout=WAIT) == ("terminate", ("shutdown", "parent_done"))
        assert (await down_of(ref)).reason == ("shutdown", "parent_done")


async def test_trapping_server_terminates_on_an_exit_signal_sent_by_its_parent() -> None:
    async with nb.Runtime():
        server = await Reporter.start_link(nb.self(), trap=True)
        ref = nb.monitor(server)
        nb.unlink(server)  # the signal, not the link, is what is tested; keep the shell alive
        nb.exit(server, "shutdown")
        assert await nb.receive(timeout=WAIT) == ("terminate", "shutdown")
        assert (await down_of(ref)).reason == "shutdown"


async def _send_exit_signal(target: nb.Pid, reason: Any) -> None:
    nb.exit(target, reason)


async def test_exit_signal_from_a_non_parent_arrives_at_handle_info() -> None:
    async with nb.Runtime():
        server = await Reporter.start_link(nb.self(), trap=True)
        other, ref = nb.spawn_monitor(_send_exit_signal, server, "hello")
        assert (await down_of(ref)).reason == "normal"
        assert await nb.receive(timeout=WAIT) == ("info", nb.Exit(other, "hello"))
        assert nb.is_alive(server)
        assert await nb.call(server, "ping", timeout=WAIT) == ("echo", "ping")


class RecordsTerminate(nb.GenServer):
    async def init(self, log: list[Any]) -> None:
        self.log = log
        nb.trap_exit(True)

    async def terminate(self, reason: Any) -> None:
        self.log.append(reason)


async def test_trapping_server_terminates_when_the_runtime_shuts_down() -> None:
    reasons: list[Any] = []
    async with nb.Runtime():
        await RecordsTerminate.start_link(reasons)
    assert reasons == ["shutdown"]


async def test_non_trapping_server_killed_by_its_parents_exit_signal_skips_terminate() -> None:
    async with nb.Runtime():
        nb.trap_exit(True)
        server = await Reporter.start_link(nb.self())
        ref = nb.monitor(server)
        nb.exit(server, "shutdown")
        assert (await down_of(ref)).reason == "shutdown"
        await assert_no_terminate_report()


async def test_kill_skips_terminate_and_the_reason_is_killed() -> None:
    async with nb.Runtime():
        server = await Reporter.start(nb.self(), trap=True)
        ref = nb.monitor(server)
        nb.exit(server, "kill")
        assert (await down_of(ref)).reason == "killed"
        await assert_no_terminate_report()
