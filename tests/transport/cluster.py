"""Start real nodes as OS processes for multi-node tests, and always clean them up.

Each node is ``python -m numbeam node --name ...`` with this folder on its path (so the helper
functions of `dist_helpers` can be spawned there by module path), a fixed test cookie in its
environment and HOME pointed at a temporary folder, so no real cookie file is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COOKIE = "numbeam-test-cookie"
START_TIMEOUT = 30.0


class NodeProc:
    """A node running in its own OS process."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def wait(self, timeout: float = 15.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        """SIGTERM (a clean stop), then SIGKILL if it does not go within a few seconds."""
        if self.proc.returncode is None:
            self.kill(signal.SIGTERM)
            try:
                await self.wait(10.0)
            except TimeoutError:
                self.kill(signal.SIGKILL)
                await self.wait(10.0)


async def start_node(
    name: str,
    *,
    home: Path,
    cookie: str = COOKIE,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    stderr: Any = None,
) -> NodeProc:
    """Start ``numbeam node --name name`` and wait for its ready line (its real name)."""
    full_env = dict(os.environ)
    full_env.update({"HOME": str(home), "NUMBEAM_COOKIE": cookie, "PYTHONUNBUFFERED": "1"})
    full_env.pop("NUMBEAM_COOKIE_FILE", None)
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numbeam",
        "node",
        "--name",
        name,
        "--path",
        str(HERE),
        *extra_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,  # (None: this process's own; a file to measure what the node logs)
        env=full_env,
    )
    try:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            if not line:
                raise RuntimeError(f"node {name} exited before it was ready")
            words = line.decode().split()
            if len(words) == 4 and words[:2] == ["numbeam", "node"] and words[3] == "ready":
                node = NodeProc(proc, words[2])
                break
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    # Keep reading its stdout so the pipe never fills and blocks the node.
    node._drain = asyncio.ensure_future(_drain(proc))  # type: ignore[attr-defined]
    return node


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass
