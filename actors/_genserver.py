"""GenServer: OTP's client-server behaviour, and the call / cast / reply / stop protocol.

A server is a process running `_serve`: it builds the user's GenServer instance, runs `init`
and acknowledges the starter, then takes one message at a time from its mailbox and
dispatches it to a callback. The wire format is OTP's, as plain tuples so it can later cross
nodes unchanged: ``("$gen_call", (pid, ref), request)``, ``("$gen_cast", request)``,
``("$gen_stop", reason)``. A caller monitors the server while it waits and notes the call's
ref on its process record (OTP 24's alias trick): `reply` hands the value straight to the
waiting caller, without its mailbox, and only while it still waits, so a reply that arrives
after a timeout is dropped instead of polluting the caller's mailbox.

Callback contract (all ``async``): ``init(*args, **kwargs)``, ``handle_call(request,
caller)`` returning the reply or `NOREPLY`, ``handle_cast(request)``, ``handle_info(msg)``,
``terminate(reason)``. ``raise nb.Stop(reason)`` in any callback stops the server: `terminate`
runs, then the process exits with that reason. An exception does the same with the exception
as the reason (and a crash report). An exit signal from the parent (the process that called
`start_link`) to a server that traps exits also runs `terminate`, as OTP's behaviours do.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from typing import Any, Final, TypeVar

from . import _runtime as rt_mod
from ._runtime import (
    _NO_REPLY,
    _PENDING,
    _WOKEN,
    Process,
    _await_reply,
    _check_timeout,
    _current,
    _device_node,
    _me,
    _remote,
    _rt,
    demonitor,
    monitor,
    receive,
    send,
)
from ._types import CallError, Down, Exit, NoProc, Pid, Ref, StartError, Stop, _ref_counter

__all__ = ["NOREPLY", "GenServer", "call", "cast", "reply", "stop"]

log = logging.getLogger("numbeam")

S = TypeVar("S", bound="GenServer")

Caller = tuple[Pid, Ref]
_new_ref = object.__new__


class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "nb.NOREPLY"


NOREPLY: Final = _NoReply()
"""Return this from `handle_call` to reply later with `nb.reply(caller, value)`."""


def _is_tagged(msg: Any, tag: str, size: int) -> bool:
    return type(msg) is tuple and len(msg) == size and type(msg[0]) is str and msg[0] == tag


def _same_reason(a: Any, b: Any) -> bool:
    if a is b:
        return True
    return type(a) is type(b) and type(a) in (str, tuple, int) and a == b


class GenServer:
    """Base class of a generic server. Subclass it and override the callbacks you need.

    Start one with ``await MyServer.start_link(*init_args, name=None, **init_kwargs)`` (linked
    to the caller) or ``await MyServer.start(...)`` (not linked). Both wait until `init`
    returns and give the new pid, or raise `nb.StartError` if `init` raised (the caller is not
    killed by that failure). State lives on ``self``.
    """

    async def init(self, *args: Any, **kwargs: Any) -> None:
        """Runs inside the new process before `start_link` returns. Default: takes no args."""
        if args or kwargs:
            raise TypeError(
                f"{type(self).__name__} got start arguments {args!r} {kwargs!r} "
                "but does not define init() to take them"
            )

    async def handle_call(self, request: Any, caller: Caller) -> Any:
        """Answer ``nb.call(server, request)``: return the reply, or `NOREPLY`."""
        raise NotImplementedError(
            f"{type(self).__name__} received call {request!r} but defines no handle_call"
        )

    async def handle_cast(self, request: Any) -> None:
        """Handle ``nb.cast(server, request)``."""
        raise NotImplementedError(
            f"{type(self).__name__} received cast {request!r} but defines no handle_cast"
        )

    async def handle_info(self, msg: Any) -> None:
        """Handle any other message (Down, Exit, timers). Default: log it and go on."""
        log.warning("%s %r received an unexpected message: %r", type(self).__name__, _pid(), msg)

    async def terminate(self, reason: Any) -> None:
        """Called when the server stops (Stop, a crash, `nb.stop`, or the parent's exit signal
        while trapping exits). Default: nothing."""

    @classmethod
    async def start_link(
        cls: type[S],
        *args: Any,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> Pid:
        """Start the server linked to the caller and wait until its `init` has returned.

        Args:
            *args, **kwargs: passed to ``init(*args, **kwargs)`` in the new process; they
                are checked against `init`'s signature first, here.
            name: register the server under this name (on the node it runs on).
            node: start it on that node instead; the class is imported there by module
                path, and its arguments must be able to cross (TypeError if not).
            device: start it on that device's worker (``"cuda:0"``, ``"fake:1"``), as for
                `node`.

        Returns:
            The new server's pid.

        Raises:
            TypeError: the arguments do not fit `init`'s signature (an unknown keyword is
                named); no process is started.
            ValueError: this node has no such device.
            nb.StartError: `init` raised or stopped (``.reason`` says why), or the name is
                taken (``("already_started", pid)``).
        """
        return await _start(cls, args, kwargs, name, True, node, device)

    @classmethod
    async def start(
        cls: type[S],
        *args: Any,
        name: str | None = None,
        node: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> Pid:
        """Start the server without a link; wait for `init` (see `start_link`)."""
        return await _start(cls, args, kwargs, name, False, node, device)


def _pid() -> Pid | None:
    proc = _current.get(None)
    return None if proc is None else proc.pid


async def _start(
    cls: type[GenServer],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: Any,
    link: bool,
    node: str | None = None,
    device: str | None = None,
) -> Pid:
    if not (isinstance(cls, type) and issubclass(cls, GenServer)):
        raise TypeError(f"start_link needs a GenServer subclass, got {cls!r}")
    me = _me(f"{cls.__name__}.start_link()")
    _check_init_args(cls, args, kwargs)
    rt = me.rt
    if device is not None:
        node = _device_node(rt, device, node)
    if node is not None and node != rt.node:
        return await _start_remote(cls, args, kwargs, name, link, me, node)
    if name is not None:
        taken = rt._names.get(name) if type(name) is str else None
        if taken is not None:
            raise StartError(
                ("already_started", taken.pid), f"the name {name!r} is already registered"
            )
    ack = Ref(rt.node)
    proc = rt._spawn(_serve, (cls, args, kwargs, me.pid, ack), name, me if link else None)
    proc.fn = cls  # crash reports and process_info name the server class, not _serve
    mref = monitor(proc.pid)
    msg = await receive(
        lambda m: (_is_tagged(m, "$ack", 4) and m[1] == ack) or (type(m) is Down and m.ref == mref)
    )
    if type(msg) is Down:
        raise StartError(msg.reason, f"{cls.__name__} exited during init: {msg.reason!r}")
    if msg[2]:
        demonitor(mref, flush=True)
        return proc.pid
    # init failed: the server unlinked itself and exits; wait for it to be gone (OTP 26).
    await receive(lambda m: type(m) is Down and m.ref == mref)
    reason = msg[3]
    err = StartError(reason, f"{cls.__name__}.init failed: {reason!r}")
    if isinstance(reason, BaseException):
        raise err from reason
    raise err


async def _start_remote(
    cls: type[GenServer],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: Any,
    link: bool,
    me: Process,
    node: str,
) -> Pid:
    """`_start` on another node (or a device's worker): spawn `_serve_remote` there, which
    imports the class by module path, and wait for its acknowledgement as locally."""
    from numbeam.transport._node import _function_path

    rt = me.rt
    if rt.dist is None:
        raise RuntimeError(
            f"cannot start {cls.__name__} on node {node!r}: this runtime is local; start it "
            "with node=..."
        )
    module, qualname = _function_path(cls, main_ok=node in rt.dist.hidden)
    ack = Ref(rt.node)
    pid, _ = rt.dist.spawn(
        _serve_remote,
        (module, qualname, list(args), dict(kwargs), me.pid, ack),
        node,
        name,
        me if link else None,
        None,
    )
    mref = monitor(pid)
    msg = await receive(
        lambda m: (_is_tagged(m, "$ack", 4) and m[1] == ack) or (type(m) is Down and m.ref == mref)
    )
    if type(msg) is Down:
        if link:
            rt_mod.unlink(pid)
        raise StartError(msg.reason, f"{cls.__name__} exited during init: {msg.reason!r}")
    if msg[2]:
        demonitor(mref, flush=True)
        return pid
    await receive(lambda m: type(m) is Down and m.ref == mref)
    reason = msg[3]
    err = StartError(reason, f"{cls.__name__}.init failed: {reason!r}")
    if isinstance(reason, BaseException):
        raise err from reason
    raise err


async def _serve_remote(
    module: str,
    qualname: str,
    args: list[Any],
    kwargs: dict[str, Any],
    parent: Pid,
    ack: Ref,
) -> None:
    """A server started from another node: find its class by module path, then serve."""
    from numbeam.transport._node import import_path

    obj = import_path(module, qualname)
    if not (isinstance(obj, type) and issubclass(obj, GenServer)):
        raise TypeError(f"{module}:{qualname} is not a GenServer subclass")
    _current.get().fn = obj  # crash reports and process_info name the server class
    await _serve(obj, tuple(args), kwargs, parent, ack)


def _check_init_args(cls: type[GenServer], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TypeError, before any process starts, when `init` cannot take these arguments."""
    init = cls.init
    if init is GenServer.init:
        if args or kwargs:
            raise TypeError(
                f"{cls.__name__}.start_link() got start arguments {args!r} {kwargs!r}, but "
                f"{cls.__name__} does not define init() to take them"
            )
        return
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):  # no signature to check (a C function): init will tell
        return
    try:
        sig.bind(None, *args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}.start_link(): init() {e}") from None


async def _serve(
    cls: type[GenServer], args: tuple[Any, ...], kwargs: dict[str, Any], parent: Pid, ack: Ref
) -> None:
    me = _current.get()
    try:
        server = cls()
        await server.init(*args, **kwargs)
    except Exception as e:
        _init_failed(parent, ack, e)
        raise
    except Stop as e:
        _init_failed(parent, ack, e.reason)
        raise
    send(parent, ("$ack", ack, True, None))
    try:
        while True:
            msg = await receive()
            if type(msg) is tuple and msg and type(msg[0]) is str:
                tag = msg[0]
                if tag == "$gen_call" and len(msg) == 3:
                    result = await server.handle_call(msg[2], msg[1])
                    if result is not NOREPLY:
                        reply(msg[1], result)
                    continue
                if tag == "$gen_cast" and len(msg) == 2:
                    await server.handle_cast(msg[1])
                    continue
                if tag == "$gen_stop" and len(msg) == 2:
                    raise Stop(msg[1])
            elif type(msg) is Exit and me.trap and msg.pid == parent:
                raise Stop(msg.reason)
            await server.handle_info(msg)
    except Stop as e:
        await server.terminate(e.reason)
        raise
    except Exception as e:
        await server.terminate(e)
        raise


def _init_failed(parent: Pid, ack: Ref, reason: Any) -> None:
    # Unlink first, so the starter learns of the failure from StartError, not by dying.
    rt_mod.unlink(parent)
    send(parent, ("$ack", ack, False, reason))


def reply(caller: Caller, value: Any) -> None:
    """Reply to a call from inside a server; `caller` is what `handle_call` was given.

    A reply to a caller that stopped waiting (timed out, or died) is dropped.
    """
    try:
        pid, ref = caller
    except (TypeError, ValueError):
        raise TypeError(
            f"nb.reply() takes the caller handle_call was given, got {caller!r}"
        ) from None
    proc = pid._proc if type(pid) is Pid else None  # a live local caller, as spawn made it
    if proc is not None and proc.call_ref is ref:
        # The hot path of Runtime._reply, inline: the caller waits in nb.call for exactly this.
        proc.call_ref = None
        proc.call_reply = value
        if proc.rt.counting:
            proc.msgs_in += 1
        if proc.state == _PENDING:
            proc.state = _WOKEN
            proc.rt._make_ready(proc)
        return
    rt = _rt()
    if type(pid) is Pid and _remote(rt, pid):
        # Delivered there only while the caller still waits.
        rt.dist.reply(pid, ref, value)  # type: ignore[union-attr]
        return
    if proc is None:
        proc = rt._lookup(pid)
    if proc is not None:
        rt._reply(proc, ref, value)


def _resolve_alive(dest: Any, what: str) -> Any:
    """The caller and the target: a local process record, or the remote destination itself."""
    me = _me(what)
    if _remote(me.rt, dest):
        return me, dest
    proc = me.rt._resolve(dest)
    if proc is None:
        raise NoProc(f"{what}: {dest!r} is not alive")
    return me, proc


async def call(dest: Pid | str | tuple[str, str], request: Any, timeout: float | None = 5.0) -> Any:
    """Send `request` to a GenServer and wait for its reply.

    Raises:
        TimeoutError: no reply within `timeout` seconds (None waits for ever).
        nb.NoProc: the server is not there.
        nb.CallError: the server exited before replying (``.reason`` is why).

    The reply does not go through the caller's mailbox: `reply` hands it to the waiting
    caller directly, so messages that arrive meanwhile are not looked at. The caller monitors
    the server while it waits; a reply after a timeout is dropped.
    """
    if timeout is not None and not (
        (type(timeout) is float or type(timeout) is int) and timeout >= 0
    ):
        _check_timeout(timeout)
    # The hot path: a live local pid, called from a process of the running runtime.
    server = dest._proc if type(dest) is Pid else None
    me = _current.get(None)
    if server is None or me is None or me.rt is not rt_mod._runtime:
        me, server = _resolve_alive(dest, "nb.call()")
    if server is me:
        raise RuntimeError(f"nb.call(): process {me.pid!r} called itself, which would deadlock")
    if me.call_ref is not None or me.state == _PENDING:
        raise RuntimeError(
            f"two tasks are waiting for process {me.pid!r} at once; only the process's own "
            "task may call nb.call() or nb.receive()"
        )
    rt = me.rt
    if server is dest:  # on another node: a monitor there, the reply comes back by OP_REPLY
        ref = monitor(dest)
        me.call_ref = ref
        try:
            send(dest, ("$gen_call", (me.pid, ref), request))  # TypeError if it cannot cross
            value = await _await_reply(me, ref, timeout)
        except TimeoutError:
            raise TimeoutError(f"nb.call({dest!r}, ...) got no reply within {timeout} s") from None
        finally:
            me.call_ref = None
            demonitor(ref, flush=True)
    else:
        # A local server: the monitor is only the server's half (its exit sends us the Down),
        # taken back here when the call is over.
        ref = _new_ref(Ref)  # (Ref(rt.node), without the call of __init__)
        ref.node = rt.node
        ref.id = next(_ref_counter)
        watchers = server.monitored_by
        if watchers is None:
            server.monitored_by = watchers = {}
        watchers[ref] = me.pid
        me.call_ref = ref
        try:
            # (rt._deliver, inline: the request goes to the server's mailbox and wakes it)
            mb = server.mailbox
            if mb is None:
                server.mailbox = mb = deque()
            mb.append(("$gen_call", (me.pid, ref), request))
            if rt.counting:
                server.msgs_in += 1
            if server.state == _PENDING:
                server.state = _WOKEN
                rt._ready.append(server)
                if not rt._drain_scheduled:
                    rt._drain_scheduled = True
                    rt._loop.call_soon(rt._drain)
            value = await _await_reply(me, ref, timeout)
        except TimeoutError:
            raise TimeoutError(f"nb.call({dest!r}, ...) got no reply within {timeout} s") from None
        finally:
            me.call_ref = None
            watchers = server.monitored_by
            if watchers is None or watchers.pop(ref, None) is None:
                # The server exited: its Down for this call may be in our mailbox.
                _drop_down(me, ref)
    if type(value) is tuple and len(value) == 2 and value[0] is _NO_REPLY:
        down = value[1]
        if _same_reason(down.reason, "noproc"):
            raise NoProc(f"nb.call(): {dest!r} is not alive")
        raise CallError(down.reason, f"nb.call({dest!r}, ...): the server exited: {down.reason!r}")
    return value


def _drop_down(me: Process, ref: Ref) -> None:
    mb = me.mailbox
    if mb:
        for i, m in enumerate(mb):
            if type(m) is Down and m.ref == ref:
                del mb[i]
                return


def cast(dest: Pid | str | tuple[str, str], request: Any) -> None:
    """Send `request` to a GenServer without waiting. Never fails, as in OTP."""
    rt = rt_mod._runtime
    if (
        type(dest) is tuple
        and rt is not None
        and rt.dist is not None
        and len(dest) == 2
        and type(dest[0]) is str
        and type(dest[1]) is str
        and dest[1] != rt.node
    ):
        rt.dist.cast_name(dest[0], dest[1], request)  # the hot path of a cast to (name, node)
        return
    try:
        send(dest, ("$gen_cast", request))
    except NoProc:
        pass


async def stop(
    dest: Pid | str | tuple[str, str], reason: Any = "normal", timeout: float | None = 5.0
) -> None:
    """Stop a GenServer with `reason` and wait until it has exited (its `terminate` ran).

    Raises:
        nb.NoProc: the server is not there.
        TimeoutError: it did not exit within `timeout`.
        nb.CallError: it exited with another reason than `reason`.
    """
    _check_timeout(timeout)
    me, proc = _resolve_alive(dest, "nb.stop()")
    if proc is me:
        raise RuntimeError("nb.stop(): a process cannot stop itself this way; raise nb.Stop")
    if proc is dest:  # remote
        ref = monitor(dest)
        send(dest, ("$gen_stop", reason))
    else:
        ref = monitor(proc.pid)
        me.rt._deliver(proc, ("$gen_stop", reason))
    try:
        down = await receive(lambda m: type(m) is Down and m.ref == ref, timeout=timeout)
    except TimeoutError:
        demonitor(ref, flush=True)
        raise TimeoutError(f"nb.stop({dest!r}): still alive after {timeout} s") from None
    if _same_reason(down.reason, "noproc"):
        raise NoProc(f"nb.stop(): {dest!r} is not alive")
    if not _same_reason(down.reason, reason):
        raise CallError(down.reason, f"nb.stop({dest!r}): it exited with {down.reason!r}")
