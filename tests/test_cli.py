"""`numbeam node` and `numbeam ping`, run as a user runs them: as subprocesses of this Python.

Every command runs with HOME pointed at a temporary directory and no NUMBEAM_* variable but
the ones a test sets, so the real ~/.numbeam.cookie is never read or created. A node's stdout
is read line by line by a thread, so that every wait on it is bounded; nodes are killed and
reaped when their test ends, whatever happened.
"""

from __future__ import annotations

import importlib
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

import pytest

import numbeam as nb

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"numbeam node (\S+) ready")
COOKIE = "test-cluster-cookie"
WAIT = 30.0  # seconds: a bound on any single wait, far above what a healthy run needs

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX signals and file modes")


def cli_env(home: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBEAM_")}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", **variables)
    return env


class NodeProcess:
    """A running `numbeam node`; its stdout lines arrive on a queue (None at end of file)."""

    def __init__(self, args: list[str], env: dict[str, str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr: IO[bytes] = open(stderr_path, "wb")  # closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "numbeam", "node", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=ROOT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def next_line(self) -> str | None:
        try:
            return self.lines.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no output from the node within {WAIT}s; stderr:\n{self.stderr()}")

    def wait_ready(self) -> str:
        """The node's real name, from its ready line, which must be its first line of output."""
        line = self.next_line()
        if line is None:
            rc = self.proc.wait(timeout=WAIT)
            pytest.fail(f"the node exited ({rc}) before it was ready; stderr:\n{self.stderr()}")
        m = READY.fullmatch(line)
        assert m, f"expected the ready line first, got {line!r}; stderr:\n{self.stderr()}"
        return m.group(1)

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the node did not stop within {WAIT}s of {sig.name}:\n{self.stderr()}")

    def rest_of_stdout(self) -> list[str]:
        """What the node printed after its ready line, once it has exited."""
        rest = []
        while (line := self.next_line()) is not None:
            rest.append(line)
        return rest

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        self._reader.join(timeout=WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()


StartNode = Callable[..., NodeProcess]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def start_node(tmp_path: Path, home: Path) -> Iterator[StartNode]:
    """Start `numbeam node ARGS...` (env: HOME=home plus the given variables); killed at the end."""
    nodes: list[NodeProcess] = []

    def start(*args: str, **variables: str) -> NodeProcess:
        stderr_path = tmp_path / f"node{len(nodes)}.stderr"
        node = NodeProcess(list(args), cli_env(home, **variables), stderr_path)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close()


def numbeam(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `numbeam ARGS...` to completion (killed if it outlives the bound)."""
    return subprocess.run(
        [sys.executable, "-m", "numbeam", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def ping(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return numbeam("ping", name, *args, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- arguments ----------------------------------------------------------------------------------


def test_node_without_a_name_is_a_usage_error(home: Path) -> None:
    result = numbeam("node", env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert result.returncode == 2
    assert "--name" in result.stderr
    assert result.stdout == ""


def test_ping_without_a_name_is_a_usage_error(home: Path) -> None:
    result = numbeam("ping", env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert result.returncode == 2
    assert "NAME" in result.stderr


@pytest.mark.parametrize("timeout", ["0", "-1", "soon"])
def test_ping_with_a_bad_timeout_is_a_usage_error(home: Path, timeout: str) -> None:
    result = ping("a@127.0.0.1:1", "--timeout", timeout, env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert result.returncode == 2
    assert "--timeout" in result.stderr
    assert list(home.iterdir()) == []  # nothing was started, no cookie file created


# -- node ---------------------------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_node_prints_its_real_name_once_then_stops_cleanly_on_a_signal(
    start_node: StartNode, sig: signal.Signals
) -> None:
    node = start_node("--name", "a@127.0.0.1:0", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    m = re.fullmatch(r"a@127\.0\.0\.1:(\d+)", name)
    assert m, name
    assert 0 < int(m.group(1)) < 65536
    assert node.stop(sig) == 0
    assert node.rest_of_stdout() == []
    assert "Traceback" not in node.stderr()


@posix_only
def test_node_with_a_bare_name_listens_on_loopback_on_a_free_port(
    start_node: StartNode, home: Path
) -> None:
    node = start_node("--name", "solo", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    m = re.fullmatch(r"solo@127\.0\.0\.1:(\d+)", name)
    assert m, name
    assert int(m.group(1)) > 0
    assert ping(name, env=cli_env(home, NUMBEAM_COOKIE=COOKIE)).stdout == "pong\n"
    assert node.stop(signal.SIGTERM) == 0


@posix_only
def test_node_refuses_a_cookie_file_that_others_can_read(
    start_node: StartNode, tmp_path: Path
) -> None:
    cookie_file = tmp_path / "cookie"
    cookie_file.write_text(COOKIE)
    cookie_file.chmod(0o644)
    node = start_node("--name", "a@127.0.0.1:0", "--cookie-file", str(cookie_file))
    assert node.next_line() is None  # no ready line
    assert node.proc.wait(timeout=WAIT) == 1
    assert f"chmod 600 {cookie_file}" in node.stderr()
    assert "Traceback" not in node.stderr()


# -- ping ---------------------------------------------------------------------------------------


@posix_only
def test_ping_of_a_running_node_is_pong(start_node: StartNode, home: Path) -> None:
    node = start_node("--name", "a@127.0.0.1:0", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    result = ping(name, env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr
    assert node.stop(signal.SIGINT) == 0


def test_ping_where_nothing_listens_is_pang(home: Path) -> None:
    name = f"nobody@127.0.0.1:{free_port()}"
    result = ping(name, "--timeout", "3", env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert (result.returncode, result.stdout) == (1, "pang\n"), result.stderr


@posix_only
def test_ping_with_a_wrong_cookie_is_pang_and_the_node_keeps_serving(
    start_node: StartNode, home: Path
) -> None:
    node = start_node("--name", "a@127.0.0.1:0", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    wrong = ping(name, "--timeout", "3", env=cli_env(home, NUMBEAM_COOKIE="not-the-cookie"))
    assert (wrong.returncode, wrong.stdout) == (1, "pang\n"), wrong.stderr
    right = ping(name, env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
    assert (right.returncode, right.stdout) == (0, "pong\n"), right.stderr
    assert node.stop(signal.SIGTERM) == 0


@posix_only
def test_node_and_ping_share_a_cookie_file_created_on_first_use(
    start_node: StartNode, home: Path, tmp_path: Path
) -> None:
    cookie_file = tmp_path / "cluster.cookie"
    node = start_node("--name", "a@127.0.0.1:0", "--cookie-file", str(cookie_file))
    name = node.wait_ready()
    assert stat.S_IMODE(cookie_file.stat().st_mode) == 0o600
    assert cookie_file.read_text().strip()
    env = cli_env(home)
    same = ping(name, "--cookie-file", str(cookie_file), env=env)
    assert (same.returncode, same.stdout) == (0, "pong\n"), same.stderr
    other = ping(name, "--cookie-file", str(tmp_path / "other.cookie"), "--timeout", "3", env=env)
    assert (other.returncode, other.stdout) == (1, "pang\n"), other.stderr
    assert node.stop(signal.SIGTERM) == 0
    assert not (home / ".numbeam.cookie").exists()


@posix_only
def test_without_cookie_options_the_cookie_file_in_home_is_used(
    start_node: StartNode, home: Path
) -> None:
    node = start_node("--name", "a@127.0.0.1:0")
    name = node.wait_ready()
    cookie_file = home / ".numbeam.cookie"
    assert stat.S_IMODE(cookie_file.stat().st_mode) == 0o600
    result = ping(name, env=cli_env(home))
    assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr
    assert node.stop(signal.SIGTERM) == 0


@posix_only
def test_node_and_ping_over_ipc(start_node: StartNode, home: Path) -> None:
    # ipc:// paths are limited to ~100 bytes, so not under pytest's long tmp_path
    directory = tempfile.mkdtemp(prefix="nb-cli-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        wanted = f"a@ipc://{directory}/a.sock"
        node = start_node("--name", wanted, NUMBEAM_COOKIE=COOKIE)
        assert node.wait_ready() == wanted
        result = ping(wanted, env=cli_env(home, NUMBEAM_COOKIE=COOKIE))
        assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr
        assert node.stop(signal.SIGTERM) == 0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@posix_only
def test_node_and_ping_with_curve_encryption(start_node: StartNode, home: Path) -> None:
    node = start_node("--name", "a@127.0.0.1:0", "--curve", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    env = cli_env(home, NUMBEAM_COOKIE=COOKIE)
    encrypted = ping(name, "--curve", env=env)
    assert (encrypted.returncode, encrypted.stdout) == (0, "pong\n"), encrypted.stderr
    plain = ping(name, "--timeout", "3", env=env)
    assert (plain.returncode, plain.stdout) == (1, "pang\n"), plain.stderr
    assert node.stop(signal.SIGTERM) == 0


# -- remote spawns ------------------------------------------------------------------------------

REMOTE_MODULE = "numbeam_cli_test_remote"
REMOTE_SOURCE = """
import numbeam as nb


async def hello(parent):
    nb.send(parent, ("hello from", nb.node()))
"""


@pytest.fixture
def remote_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, ModuleType]]:
    """A module in its own directory, importable here and, with `--path`, on a CLI node."""
    directory = tmp_path / "mods"
    directory.mkdir()
    (directory / f"{REMOTE_MODULE}.py").write_text(REMOTE_SOURCE)
    monkeypatch.syspath_prepend(str(directory))
    module = importlib.import_module(REMOTE_MODULE)
    try:
        yield directory, module
    finally:
        sys.modules.pop(REMOTE_MODULE, None)


def spawn_hello_on(name: str, hello: Callable[..., object]) -> tuple[object, object]:
    """From a node in this process: spawn `hello` on `name`; (its message or None, Down reason)."""

    async def main() -> tuple[object, object]:
        assert await nb.connect(name)
        _, ref = nb.spawn_monitor(hello, nb.self(), node=name)
        down = await nb.receive(lambda m: isinstance(m, nb.Down) and m.ref == ref, timeout=WAIT)
        hello_msg = None
        try:
            hello_msg = await nb.receive(tuple, timeout=0)
        except TimeoutError:
            pass
        return hello_msg, down.reason

    return nb.run(main, node="tester@127.0.0.1:0", cookie=COOKIE)


@posix_only
def test_node_serves_remote_spawns_of_functions_on_its_path(
    start_node: StartNode, remote_module: tuple[Path, ModuleType]
) -> None:
    directory, module = remote_module
    node = start_node("--name", "a@127.0.0.1:0", "--path", str(directory), NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    hello_msg, reason = spawn_hello_on(name, module.hello)
    assert hello_msg == ("hello from", name)
    assert reason == "normal"
    assert node.stop(signal.SIGTERM) == 0


@posix_only
def test_without_path_the_remote_spawn_exits_with_an_error(
    start_node: StartNode, remote_module: tuple[Path, ModuleType]
) -> None:
    _, module = remote_module
    node = start_node("--name", "a@127.0.0.1:0", NUMBEAM_COOKIE=COOKIE)
    name = node.wait_ready()
    hello_msg, reason = spawn_hello_on(name, module.hello)
    assert hello_msg is None
    assert not nb.is_normal_exit(reason)
    assert node.stop(signal.SIGTERM) == 0
