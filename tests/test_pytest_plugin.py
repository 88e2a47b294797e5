"""numbeam's pytest plugin, run on small test files with pytest's own `pytester`: passing and
failing tests, the mailbox in an assert_receive failure, unnoticed crashes, leftover
processes, start_supervised and nb_nodes.

The inner runs are in this process (``runpytest_inprocess``), with pytest-asyncio in its
default strict mode: the plugin runs the test bodies in a loop of its own, except for the one
run that sets ``asyncio_mode = auto``.
"""

from __future__ import annotations

import sys

# zmq.utils.monitor and _node: what a named node imports, imported with this module. pytester
# unloads the modules imported after its fixture was set up (in a test's body, or by an
# in-process run: _run checks that those import none), and a module of numbeam's or pyzmq's
# imported a second time would have classes other than those its first users hold.
import pytest
import zmq.utils.monitor  # noqa: F401
from numbeam.transport import _node  # noqa: F401

COUNTER = """
import pytest
import numbeam as nb

class Counter(nb.GenServer):
    async def init(self, n):
        self.n = n
    async def handle_cast(self, msg):
        self.n += msg[1]
    async def handle_info(self, msg):
        nb.send(msg[1], ("count", self.n))
"""


class _NewImports:
    """A plugin for the inner run: which modules it imported (pytester unloads them after,
    and a module of numbeam's imported twice would have two of each class)."""

    def __init__(self) -> None:
        self.before = set(sys.modules)
        self.new: set[str] = set()

    def pytest_sessionfinish(self) -> None:
        self.new = {m for m in set(sys.modules) - self.before if not m.startswith("test_")}


def _run(pytester: pytest.Pytester, *args: str, mode: str = "strict") -> pytest.RunResult:
    pytester.makeini(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n"
    )
    imports = _NewImports()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q", *args, plugins=[imports])
    assert not imports.new, f"the in-process run imported {sorted(imports.new)}"
    return result


def test_the_test_body_is_a_process_with_assert_and_refute_receive(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        COUNTER
        + """
async def test_counter(nb_runtime, start_supervised):
    assert nb_runtime.pid == nb.self()
    pid = await start_supervised(nb.Child(Counter, args=(0,)))
    nb.cast(pid, ("add", 2)); nb.send(pid, ("report", nb.self()))
    msg = await nb.testing.assert_receive(lambda m: m[0] == "count", timeout=5)
    assert msg == ("count", 2)
    await nb.testing.refute_receive(int, timeout=0.05)

async def test_a_value_matches_an_equal_message(nb_runtime):
    nb.send(nb.self(), ("ok", 1))
    assert await nb.testing.assert_receive(("ok", 1)) == ("ok", 1)

def test_plain_tests_are_untouched():
    assert True
"""
    )
    _run(pytester).assert_outcomes(passed=3)


def test_assert_receive_failure_shows_the_mailbox(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import numbeam as nb

async def test_waits_for_the_wrong_thing(nb_runtime):
    nb.send(nb.self(), ("count", 3))
    nb.send(nb.self(), "hello")
    await nb.testing.assert_receive(lambda m: m == ("count", 2), timeout=0.05)
"""
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: assert_receive: no message matched "
            'lambda m: m == ("count", 2) within 0.05 s; '
            "the mailbox of <* has 2 message(s):",
            "*  ('count', 3)",
            "*  'hello'",
        ]
    )


def test_refute_receive_failure_names_the_message(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import numbeam as nb

async def test_gets_what_it_refutes(nb_runtime):
    nb.send(nb.self(), 42)
    nb.send(nb.self(), "rest")
    await nb.testing.refute_receive(int)
"""
    )
    result = _run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: refute_receive: got 42, which matches isinstance(m, int), "
            "within 0.1 s; "
            "the mailbox of <* has 1 message(s):",
            "*  'rest'",
        ]
    )


def test_an_unnoticed_crash_fails_the_test_and_a_watched_one_does_not(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
import numbeam as nb

async def boom(parent):
    nb.send(parent, "crashing")
    raise ValueError("nobody saw this")

async def test_fire_and_forget_crash(nb_runtime):
    pid = nb.spawn(boom, nb.self())
    await nb.testing.assert_receive("crashing")  # (it raises right after sending)

async def test_monitored_crash(nb_runtime):
    pid, ref = nb.spawn_monitor(boom, nb.self())
    down = await nb.testing.assert_receive(nb.Down, timeout=5)
    assert isinstance(down.reason, ValueError)
"""
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*1 process(es) of the test crashed with no link or monitor to notice*",
            "*ValueError('nobody saw this')*",
        ]
    )


def test_leftover_processes_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import numbeam as nb

async def forever():
    await nb.receive(lambda m: False)

async def test_leaves_one_behind(nb_runtime):
    nb.spawn(forever)
"""
    )
    result = _run(pytester, "-W", "default")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NumbeamLeakWarning: 1 process(es) of the test were still alive when it returned,"
            " and were killed with its runtime: <*> (forever)*"
        ]
    )


def test_supervised_children_are_stopped_and_a_linked_crash_fails(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        COUNTER
        + """
async def test_stopped_after(nb_runtime, start_supervised):
    pid = await start_supervised(nb.Child(Counter, args=(0,)))
    assert nb.is_alive(pid)

async def crash():
    raise RuntimeError("linked")

async def test_linked_crash(nb_runtime):
    nb.spawn_link(crash)
    await nb.receive(timeout=5)

@pytest.mark.nb_runtime(shutdown_timeout=1.5)
async def test_marker_options(nb_runtime):
    assert nb_runtime.options.shutdown_timeout == 1.5

def test_sync_test_cannot_use_it(nb_runtime):
    pass
"""
    )
    result = _run(pytester, "-W", "error::pytest.PytestWarning", mode="auto")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*UsageError:*test_sync_test_cannot_use_it: the nb_runtime fixture runs the test as "
            "a numbeam process, so the test must be an `async def`",
            "*_ test_linked_crash _*",
            "*Stop: linked",
        ]
    )


def test_nb_nodes_starts_connected_nodes_and_stops_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import numbeam as nb

async def where(report_to):
    nb.send(report_to, ("at", nb.node()))

async def test_two(nb_nodes):
    (a,) = await nb_nodes(1)
    assert nb.nodes() == [a]
    nb.spawn("test_two:where", nb.self(), node=a)
    assert await nb.testing.assert_receive(lambda m: m[0] == "at", timeout=20) == ("at", a)
"""
    )
    # (a module name the node can import `where` from, with the test's folder on its path)
    test_file = pytester.path / "test_nb_nodes_starts_connected_nodes_and_stops_them.py"
    test_file.rename(pytester.path / "test_two.py")
    _run(pytester).assert_outcomes(passed=1)
