"""`nb.testing`: ExUnit's ``assert_receive`` and ``refute_receive`` for numbeam processes.

Inside a process (a test that uses the ``nb_runtime`` fixture of numbeam's pytest plugin runs
as one)::

    nb.send(pid, ("report", nb.self()))
    msg = await nb.testing.assert_receive(lambda m: m[0] == "count", timeout=0.5)
    await nb.testing.refute_receive(nb.Down)

A failure raises AssertionError with what was expected and the messages that were in the
mailbox, so a test that waited for the wrong thing shows what it got instead.
"""

from __future__ import annotations

import ast
import inspect
import reprlib
from collections.abc import Callable
from typing import Any

from numbeam.actors._runtime import _check_timeout, _me, receive

__all__ = ["assert_receive", "refute_receive"]

_SHOWN = 20  # messages of the mailbox shown in a failure message
_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 10
_repr.maxlevel = 4


def _check(timeout: Any, what: str) -> None:
    if timeout is None:
        raise TypeError(f"{what}: timeout must be a number of seconds, not None")
    _check_timeout(timeout)


def _predicate(match: Any) -> Callable[[Any], bool]:
    """`match` as nb.receive takes it (None, a type, a tuple of types, a predicate), or any
    other value: a message equal to it."""
    if match is None:
        return lambda m: True
    if isinstance(match, type):
        return lambda m: isinstance(m, match)
    if isinstance(match, tuple) and match and all(isinstance(t, type) for t in match):
        return lambda m: isinstance(m, match)
    if callable(match):
        return match  # type: ignore[no-any-return]
    return lambda m: type(m) is type(match) and m == match


def _lambda_source(fn: Any) -> str | None:
    """The text of a lambda as written in its source, if it can be found."""
    try:
        line = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    text = " ".join(line.split())
    start = text.find("lambda")
    if start < 0:
        return None
    text = text[start:]
    for end in range(len(text), 0, -1):  # the longest prefix that is just the lambda
        try:
            tree = ast.parse(text[:end], mode="eval")
        except SyntaxError:
            continue
        if isinstance(tree.body, ast.Lambda):
            return text[:end]
    return None


def _describe(match: Any) -> str:
    """What `match` asks for, as in 'no message matched ...'."""
    if isinstance(match, type):
        return f"isinstance(m, {match.__qualname__})"
    if isinstance(match, tuple) and match and all(isinstance(t, type) for t in match):
        return f"isinstance(m, ({', '.join(t.__qualname__ for t in match)}))"
    if callable(match):
        name = getattr(match, "__qualname__", None) or repr(match)
        if name.endswith("<lambda>"):
            return _lambda_source(match) or name
        return name
    return f"== {_repr.repr(match)}"


def _mailbox(what: str) -> str:
    proc = _me(what)
    box = list(proc.mailbox or ())
    if not box:
        return f"the mailbox of {proc.pid!r} is empty"
    lines = [f"the mailbox of {proc.pid!r} has {len(box)} message(s):"]
    lines += [f"  {_repr.repr(m)}" for m in box[:_SHOWN]]
    if len(box) > _SHOWN:
        lines.append(f"  ... and {len(box) - _SHOWN} more")
    return "\n".join(lines)


async def assert_receive(match: Any = None, timeout: float = 0.1) -> Any:
    """Receive the first message that `match` matches, waiting up to `timeout` seconds, and
    return it; messages that do not match stay in the mailbox, in order.

    `match`: None (any message), a type or tuple of types, a predicate, or a value (a message
    equal to it). Raises AssertionError, showing the mailbox, if none arrives in time.
    """
    _check(timeout, "nb.testing.assert_receive()")
    pred = _predicate(match)
    try:
        return await receive(pred, timeout=timeout)
    except TimeoutError:
        what = "no message arrived" if match is None else f"no message matched {_describe(match)}"
        raise AssertionError(
            f"assert_receive: {what} within {timeout} s; " + _mailbox("nb.testing.assert_receive()")
        ) from None


async def refute_receive(match: Any = None, timeout: float = 0.1) -> None:
    """Check that no message that `match` matches arrives within `timeout` seconds (or is
    already in the mailbox); `match` as for `assert_receive`.

    Raises AssertionError naming the message, and showing the rest of the mailbox, if one
    does (it is taken out of the mailbox).
    """
    _check(timeout, "nb.testing.refute_receive()")
    pred = _predicate(match)
    try:
        got = await receive(pred, timeout=timeout)
    except TimeoutError:
        return
    which = "" if match is None else f", which matches {_describe(match)},"
    raise AssertionError(
        f"refute_receive: got {_repr.repr(got)}{which} within {timeout} s; "
        + _mailbox("nb.testing.refute_receive()")
    )
