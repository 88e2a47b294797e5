"""``numbeam observer NODE`` and ``numbeam remsh NODE``: join a cluster as a hidden node (the
nodes do not list it and introduce it to nobody) and look at it.

The observer serves the page of `_web` for every node it finds from NODE. The remote shell is
an asyncio REPL running as a process of the hidden node: ``await`` works at the prompt, every
``nb.*`` call works (``nb.call(("counter", target), "get")``), and `rpc` runs a function on
another node (``await rpc("numbeam:processes")`` lists the target's processes).
"""

from __future__ import annotations

import ast
import asyncio
import codeop
import contextlib
import importlib
import inspect
import secrets
import sys
import traceback
from typing import Any

import numbeam as nb
from numbeam._cli_support import connect_within, until_signalled

__all__ = ["observe", "remsh", "rpc"]

RPC_TIMEOUT = 10.0


async def observe(target: str, timeout: float) -> int:
    """The ``numbeam observer`` node's main: connect, print the page's address, serve until
    SIGINT or SIGTERM."""
    from numbeam.actors._runtime import _rt

    if not await connect_within(target, timeout):
        print(f"numbeam observer: cannot connect to {target}", file=sys.stderr)
        return 1
    obs = _rt().observer
    obs.seeds.append(target)
    print(f"numbeam observer {obs.url} watching {target}", flush=True)
    await until_signalled()
    return 0


# -- the remote shell ---------------------------------------------------------------------------


async def _rpc_there(reply_to: nb.Pid, ref: str, path: str, args: list[Any]) -> None:
    """Spawned on the node `rpc` names: call `path` there, send back ``(ref, ok, value)``."""
    try:
        module, sep, qualname = path.partition(":")
        if not sep or not module or not qualname:
            raise ValueError(f"a function path looks like 'package.module:function', got {path!r}")
        fn: Any = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        value = fn(*args)
        if inspect.isawaitable(value):
            value = await value
        nb.send(reply_to, ("$rpc", ref, True, value))
    except Exception as e:
        nb.send(reply_to, ("$rpc", ref, False, f"{type(e).__name__}: {e}"))


async def rpc(path: str, *args: Any, node: str, timeout: float = RPC_TIMEOUT) -> Any:
    """Call the function `path` (``"module:function"``, sync or async) with `args` on `node`
    and return its result (it must be able to cross: msgpack). An exception there raises
    `nb.RemoteError` here."""
    ref = secrets.token_hex(8)
    _, mref = nb.spawn_monitor(
        f"{__name__}:_rpc_there", nb.self(), ref, path, list(args), node=node
    )
    msg = await nb.receive(
        lambda m: (
            (type(m) is tuple and len(m) == 4 and m[0] == "$rpc" and m[1] == ref)
            or (type(m) is nb.Down and m.ref == mref)
        ),
        timeout=timeout,
    )
    if type(msg) is nb.Down:
        raise nb.RemoteError("Down", f"the rpc process exited: {msg.reason!r}", "")
    nb.demonitor(mref, flush=True)
    if not msg[2]:
        raise nb.RemoteError(msg[3].split(":", 1)[0], msg[3], "")
    return msg[3]


def _compiler() -> codeop.CommandCompiler:
    compiler = codeop.CommandCompiler()
    compiler.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return compiler


def _input(prompt: str) -> str:
    """A line with its newline, or "" at end of input (`input` edits and keeps history when
    stdin is a terminal and `readline` is there)."""
    try:
        return input(prompt) + "\n"
    except EOFError:
        return ""


async def _read_line(prompt: str) -> str:
    sys.stdout.flush()
    return await asyncio.get_running_loop().run_in_executor(None, _input, prompt)


async def remsh(target: str, timeout: float) -> int:
    """The ``numbeam remsh`` node's main: connect, then read, evaluate (awaiting what needs
    it) and print, until end of input or ``exit()``."""
    if not await connect_within(target, timeout):
        print(f"numbeam remsh: cannot connect to {target}", file=sys.stderr)
        return 1

    async def remote_rpc(path: str, *args: Any, node: str = target) -> Any:
        return await rpc(path, *args, node=node)

    async def processes(node: str = target) -> list[Any]:
        """The pids of `node`'s processes."""
        return await rpc("numbeam:processes", node=node)  # type: ignore[no-any-return]

    async def process_info(pid: nb.Pid) -> Any:
        """`nb.process_info` of a pid of any node."""
        return await rpc("numbeam:process_info", pid, node=pid.node)

    namespace: dict[str, Any] = {
        "__name__": "__remsh__",
        "asyncio": asyncio,
        "nb": nb,
        "target": target,
        "rpc": remote_rpc,
        "processes": processes,
        "process_info": process_info,
    }
    print(
        f"numbeam remsh: connected to {target} as hidden node {nb.node()}\n"
        "`await` works at the prompt; names: nb, asyncio, target, rpc(path, *args, node=target),"
        " processes(node=target), process_info(pid); Ctrl-D or exit() quits",
        flush=True,
    )
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    compiler = _compiler()
    lines: list[str] = []
    while True:
        line = await _read_line("... " if lines else f"({target})> ")
        if not line:  # end of input
            sys.stdout.write("\n")
            return 0
        lines.append(line.rstrip("\n"))
        source = "\n".join(lines)
        try:
            code = compiler(source, "<remsh>", "single")
        except (SyntaxError, OverflowError, ValueError):
            lines.clear()
            traceback.print_exc(limit=0, file=sys.stdout)
            continue
        if code is None:
            continue  # more to come (a block, an open bracket)
        lines.clear()
        try:
            result = eval(code, namespace)
            if code.co_flags & inspect.CO_COROUTINE:
                await result
        except SystemExit:
            return 0
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
