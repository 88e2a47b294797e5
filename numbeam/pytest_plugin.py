"""numbeam's pytest plugin (loaded through the ``pytest11`` entry point): ExUnit's test
conveniences for actor tests.

Fixtures:

``nb_runtime``
    The test (an ``async def``) runs as a process inside a fresh runtime: ``nb.self()``,
    ``nb.receive`` and ``nb.testing.assert_receive`` work in its body, and the runtime is
    closed when it returns. The value is the `nb.Runtime`. Its options come from the marker
    ``@pytest.mark.nb_runtime(**options)`` (default: a local runtime; a node
    ``test@127.0.0.1:0`` with a fresh cookie when the test uses ``nb_nodes``). The test fails
    if one of its processes crashed unnoticed (with no link and no monitor on it: only a log
    line would tell); processes still alive when the body returns are reported with a
    `NumbeamLeakWarning`, then killed with the runtime.
``start_supervised``
    ``pid = await start_supervised(nb.Child(...))`` starts the child under a supervisor of
    the test (a DynamicSupervisor linked to the test process) and returns its pid; it is
    stopped at the end of the test, before the leak check.
``nb_nodes``
    ``a, b = await nb_nodes(2)`` starts real ``numbeam node`` OS processes on loopback (with
    the test's directory on their path and the test node's cookie), connects the test's node
    to them and returns their names; they are stopped after the test.

The plugin changes nothing for tests that use none of these fixtures. It runs the test body
in pytest-asyncio's event loop when pytest-asyncio runs the test, else in one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import secrets
import signal
import sys
import warnings
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numbeam as nb

__all__ = ["NumbeamLeakWarning"]

NODE_START_TIMEOUT = 60.0  # seconds for a `numbeam node` to print its ready line
NODE_STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL


class NumbeamLeakWarning(pytest.PytestWarning):
    """Raised (as a warning) when processes of a test are still alive when its body returns."""


class _TestState:
    """What the plugin keeps for one test that uses ``nb_runtime``."""

    def __init__(self, runtime: nb.Runtime, cookie: str | None) -> None:
        self.runtime = runtime
        self.cookie = cookie
        self.unnoticed: list[tuple[Any, BaseException]] = []
        self.supervisor: Any = None
        self.nodes: list[asyncio.subprocess.Process] = []
        self.node_names: list[str] = []

    def on_crash(self, pid: Any, exc: BaseException) -> None:
        """A crash hook of the runtime: remember crashes that no link or monitor will see."""
        proc = self.runtime._procs.get(pid.id)
        if proc is not None and not proc.links and not proc.monitored_by:
            self.unnoticed.append((pid, exc))


_STATE = pytest.StashKey[_TestState]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nb_runtime(**options): options of the runtime the nb_runtime fixture runs the test "
        "in (those of nb.Runtime, e.g. node='t@127.0.0.1:0')",
    )


@pytest.fixture
def nb_runtime(request: pytest.FixtureRequest) -> nb.Runtime:
    """The runtime the test body runs in, as a process (see the module's docstring)."""
    import numbeam as nb

    if not inspect.iscoroutinefunction(request.function):
        raise pytest.UsageError(
            f"{request.node.nodeid}: the nb_runtime fixture runs the test as a numbeam "
            "process, so the test must be an `async def`"
        )
    marker = request.node.get_closest_marker("nb_runtime")
    options = dict(marker.kwargs) if marker is not None else {}
    cookie = None
    if "nb_nodes" in request.fixturenames:
        cookie = str(options.get("cookie") or secrets.token_urlsafe(24))
        options.setdefault("node", "test@127.0.0.1:0")
        options["cookie"] = cookie
    state = _TestState(nb.Runtime(**options), cookie)
    request.node.stash[_STATE] = state
    return state.runtime


@pytest.fixture
def start_supervised(
    nb_runtime: nb.Runtime, request: pytest.FixtureRequest
) -> Callable[[Any], Awaitable[nb.Pid]]:
    """``await start_supervised(child)``: start `child` (an `nb.Child`) under the test's
    supervisor and return its pid; stopped at the end of the test."""
    import numbeam as nb

    state = request.node.stash[_STATE]

    async def start(child: nb.Child) -> nb.Pid:
        if state.supervisor is None:
            state.supervisor = await nb.DynamicSupervisor.start_link()
        return await nb.DynamicSupervisor.start_child(state.supervisor, child)

    return start


@pytest.fixture
def nb_nodes(
    nb_runtime: nb.Runtime, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Awaitable[list[str]]]:
    """``names = await nb_nodes(n)``: start `n` ``numbeam node`` processes, connected to the
    test's node; stopped after the test."""
    state = request.node.stash[_STATE]
    home = tmp_path_factory.mktemp("nb_nodes_home")
    test_dir = str(Path(str(request.path)).parent)

    async def start(
        n: int = 1, *, prefix: str = "node", args: tuple[str, ...] = (), env: Any = None
    ) -> list[str]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"nb_nodes(n): n must be an int >= 1, got {n!r}")
        first = len(state.nodes)
        started = await asyncio.gather(
            *(
                _start_node(state, f"{prefix}{first + i}", home, test_dir, args, env)
                for i in range(n)
            )
        )
        return list(started)

    return start


async def _start_node(
    state: _TestState,
    short: str,
    home: Path,
    test_dir: str,
    args: tuple[str, ...],
    env: Any,
) -> str:
    import numbeam as nb

    full_env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    full_env["NUMBEAM_COOKIE"] = state.cookie or ""
    full_env.pop("NUMBEAM_COOKIE_FILE", None)
    full_env.update(env or {})
    # (stderr is this process's: pytest captures it and shows it with a failure)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numbeam",
        "node",
        "--name",
        f"{short}@127.0.0.1:0",
        "--devices",
        "",
        "--path",
        test_dir,
        *args,
        stdout=asyncio.subprocess.PIPE,
        env=full_env,
    )
    state.nodes.append(proc)
    assert proc.stdout is not None
    async with asyncio.timeout(NODE_START_TIMEOUT):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"nb_nodes: node {short} exited before it was ready")
            words = line.decode().split()
            if len(words) == 4 and words[:2] == ["numbeam", "node"] and words[3] == "ready":
                name = words[2]
                break
    state.node_names.append(name)
    if not await asyncio.wait_for(nb.connect(name), NODE_START_TIMEOUT):
        raise RuntimeError(f"nb_nodes: cannot connect to node {name}")
    return name


async def _stop_nodes(state: _TestState) -> None:
    for proc in state.nodes:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in state.nodes:
        try:
            await asyncio.wait_for(proc.wait(), NODE_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc.stdout is not None:
            with contextlib.suppress(Exception):
                await proc.stdout.read()


async def _stop_supervisor(state: _TestState) -> None:
    import numbeam as nb

    sup = state.supervisor
    if sup is None or not nb.is_alive(sup):
        return
    nb.unlink(sup)  # its "shutdown" must not reach the test process
    ref = nb.monitor(sup)
    nb.exit(sup, "shutdown")
    await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=60.0)


def _leftovers(before: set[Any]) -> list[tuple[Any, Any]]:
    """The processes alive now that were not before the test, less those linked to the test
    process, directly or through others (they go down with it, as in ExUnit)."""
    import numbeam as nb

    linked = {nb.self()}
    todo = [nb.self()]
    while todo:
        info = nb.process_info(todo.pop()) or {}
        for other in info.get("links", ()):
            if other not in linked and other.node == nb.node():
                linked.add(other)
                todo.append(other)
    out = []
    for pid in nb.processes():
        if pid not in before and pid not in linked:
            out.append((pid, (nb.process_info(pid) or {}).get("function")))
    return out


def _run_in_runtime(
    item: pytest.Item, test: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """`test` wrapped so that its body runs as the shell process of the test's runtime."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        import numbeam as nb

        state = item.stash[_STATE]
        rt = state.runtime
        leftovers: list[tuple[Any, Any]] = []
        try:
            async with rt:
                rt.crash_hooks.append(state.on_crash)
                before = set(nb.processes())
                try:
                    result = await test(*args, **kwargs)
                finally:
                    try:
                        await _stop_supervisor(state)
                        for _ in range(3):  # exits already under way land first
                            await asyncio.sleep(0)
                    finally:
                        leftovers = _leftovers(before)
        except BaseException as e:
            for pid, exc in state.unnoticed:
                e.add_note(f"numbeam: process {pid!r} crashed unnoticed: {exc!r}")
            raise
        finally:
            await _stop_nodes(state)
        if state.unnoticed:
            lines = [f"  {pid!r}: {exc!r}" for pid, exc in state.unnoticed]
            pytest.fail(
                f"{len(state.unnoticed)} process(es) of the test crashed with no link or "
                "monitor to notice (see the crash reports in the log):\n" + "\n".join(lines),
                pytrace=False,
            )
        if leftovers:
            shown = ", ".join(f"{pid!r} ({fn})" for pid, fn in leftovers)
            warnings.warn(
                NumbeamLeakWarning(
                    f"{len(leftovers)} process(es) of the test were still alive when it "
                    f"returned, and were killed with its runtime: {shown}"
                ),
                stacklevel=1,
            )
        return result

    run._numbeam_wrapped = True  # type: ignore[attr-defined]
    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    if not isinstance(item, pytest.Function) or "nb_runtime" not in item.fixturenames:
        return (yield)
    original = item.obj
    if not inspect.iscoroutinefunction(original):
        return (yield)  # (the fixture has failed the test already)
    item.obj = _run_in_runtime(item, original)
    try:
        return (yield)
    finally:
        item.obj = original


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run the wrapped test in an event loop of our own when nothing else does (no
    pytest-asyncio, or its strict mode without an asyncio marker)."""
    fn = pyfuncitem.obj
    if not getattr(fn, "_numbeam_wrapped", False) or not inspect.iscoroutinefunction(fn):
        return None
    kwargs = {arg: pyfuncitem.funcargs[arg] for arg in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(fn(**kwargs))
    return True
