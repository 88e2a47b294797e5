"""The values processes exchange with the runtime: pids, refs, runtime messages, exceptions.

These are plain data. A `Pid` names a process by (node, number, creation) exactly as Erlang
does, so it stays a small immutable value that can later cross a node boundary; it never holds
the process itself. Exit reasons are data too (`"normal"`, `"killed"`, an exception instance),
so the only exceptions here are the few that the public API raises.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

LOCAL_NODE = "nonode@nohost"

# One counter per OS process: refs and timer refs never repeat, even across runtimes.
_ref_counter = itertools.count(1)


class Pid:
    """A process identifier: ``(node, id, creation)``. Compare and hash it; never build one.

    The runtime caches the live local process on the pid it created (``_proc``, cleared when
    the process exits) so `send` skips a table lookup; it is not part of the value.
    """

    __slots__ = ("_hash", "_proc", "creation", "id", "node")

    node: str
    id: int
    creation: int

    def __init__(self, node: str, id: int, creation: int) -> None:
        self.node = node
        self.id = id
        self.creation = creation
        self._hash = (id * 1_000_003) ^ creation  # cheap; the node rarely differs
        self._proc: Any = None

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not Pid:
            return NotImplemented
        return self.id == other.id and self.creation == other.creation and self.node == other.node

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        node = "0" if self.node == LOCAL_NODE else self.node
        return f"<{node}.{self.id}.{self.creation}>"

    def __reduce__(self) -> Any:
        return (Pid, (self.node, self.id, self.creation))


class Ref:
    """A unique reference (monitors, calls, timers). Unique within its node's OS process."""

    __slots__ = ("id", "node")

    node: str
    id: int

    def __init__(self, node: str = LOCAL_NODE, id: int | None = None) -> None:
        self.node = node
        self.id = next(_ref_counter) if id is None else id

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Ref):
            return NotImplemented
        return self.id == other.id and self.node == other.node

    def __hash__(self) -> int:
        return self.id  # (equal refs have equal ids; refs of other nodes rarely share one)

    def __repr__(self) -> str:
        return f"#Ref<{self.id}>"


class TimerRef(Ref):
    """The reference `send_after` returns; give it to `cancel_timer`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"#TimerRef<{self.id}>"


def make_ref() -> Ref:
    """Return a new unique reference, like Erlang's ``make_ref()``."""
    return Ref()


@dataclass(frozen=True, slots=True)
class Down:
    """Delivered to a monitoring process when the monitored process exits."""

    ref: Ref
    pid: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class Exit:
    """Delivered to a process that traps exits instead of the exit signal that would kill it."""

    pid: Pid
    reason: Any


class Stop(BaseException):
    """Raise ``nb.Stop(reason)`` to end the current process with exactly ``reason``.

    It derives from BaseException, like SystemExit, so ``except Exception`` does not swallow it.
    """

    def __init__(self, reason: Any = "normal") -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Stop({self.reason!r})"


class NoProc(LookupError):
    """Raised when a call, link or send names a process or registered name that does not exist."""


class CallError(RuntimeError):
    """Raised when the process a call waits on exits before replying; ``.reason`` is its reason."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        super().__init__(message or f"the process exited before replying: {reason!r}")
        self.reason = reason


class StartError(RuntimeError):
    """Raised when a process fails to start (its init raised, or a limit refused it)."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        super().__init__(message or f"failed to start: {reason!r}")
        self.reason = reason


def is_normal_exit(reason: Any) -> bool:
    """True for the reasons OTP treats as a clean stop: normal, shutdown, (shutdown, term)."""
    if type(reason) is str:
        return reason == "normal" or reason == "shutdown"
    return type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown"


@dataclass(frozen=True, slots=True)
class NodeDown:
    """Delivered to a process that called `nb.monitor_node(name)` when that node is lost.

    ``reason`` is ``"connection_closed"`` (the peer stopped, died, or went silent past the
    heartbeat timeout), ``"disconnect"`` (`nb.disconnect` on either side) or
    ``"noconnection"`` (it could not be reached, or refused us).
    """

    name: str
    reason: Any


class RemoteError(Exception):
    """Raised when an exception crosses a node boundary (also an exit reason from another node).

    Exceptions are never pickled: what arrives is the exception's type name (``module.Qualname``,
    or just the name for builtins), its message and its formatted traceback, as text.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __repr__(self) -> str:
        return f"RemoteError({self.type_name!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RemoteError):
            return NotImplemented
        return (self.type_name, self.message) == (other.type_name, other.message)

    def __hash__(self) -> int:
        return hash((self.type_name, self.message))
