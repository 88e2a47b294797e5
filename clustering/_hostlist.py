"""Slurm's host list syntax: ``gpu[01-04,07]`` and friends, expanded as ``scontrol show
hostnames`` expands them.

A host list is a comma-separated list of host expressions; commas inside brackets separate the
ranges of one bracket group. A bracket group holds single numbers and ``lo-hi`` ranges; a number
written with leading zeros sets the width of every number its range gives (``[08-11]`` gives
``08 09 10 11``). An expression may have several bracket groups (``rack[1-2]-node[1-3]``): it
stands for every combination, the leftmost group varying slowest.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["expand_hostlist"]

_RANGE = re.compile(r"(\d+)(?:-(\d+))?\Z")
# Slurm refuses host lists past this many hosts (MAX_RANGE in its hostlist.c is 64k * 16).
_MAX_HOSTS = 1 << 20


def _split_top(text: str, where: str) -> list[str]:
    """Split on the commas that are outside brackets; checks that brackets balance."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"bad host list {where!r}: nested '[' at position {i}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"bad host list {where!r}: ']' without '[' at position {i}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"bad host list {where!r}: '[' without ']'")
    parts.append(text[start:])
    return parts


def _group(body: str, where: str) -> list[str]:
    """The numbers of one bracket group, as strings with their padding."""
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.match(item.strip())
        if m is None:
            raise ValueError(
                f"bad host list {where!r}: {item!r} in [{body}] is not a number or a lo-hi range"
            )
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise ValueError(f"bad host list {where!r}: range {item!r} goes down")
        if hi - lo >= _MAX_HOSTS:
            raise ValueError(f"bad host list {where!r}: range {item!r} is too large")
        width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def _expand_one(expr: str, where: str) -> list[str]:
    pieces: list[list[str]] = []
    pos = 0
    while pos < len(expr):
        open_at = expr.find("[", pos)
        if open_at < 0:
            pieces.append([expr[pos:]])
            break
        close_at = expr.index("]", open_at)  # balanced: _split_top checked
        if open_at > pos:
            pieces.append([expr[pos:open_at]])
        pieces.append(_group(expr[open_at + 1 : close_at], where))
        pos = close_at + 1
    hosts = ["".join(combo) for combo in itertools.product(*pieces)]
    if len(hosts) > _MAX_HOSTS:
        raise ValueError(f"bad host list {where!r}: more than {_MAX_HOSTS} hosts")
    return hosts


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm host list: ``"gpu[01-03,07]"`` is ``["gpu01", "gpu02", "gpu03",
    "gpu07"]``; ``"a[1-2]-b[1-2],c"`` is ``["a1-b1", "a1-b2", "a2-b1", "a2-b2", "c"]``.

    Hosts keep the order of the list (as ``scontrol show hostnames`` prints them; duplicates
    are kept too). Raises ValueError naming what is wrong with a malformed list, TypeError for
    a non-str.
    """
    if not isinstance(hostlist, str):
        raise TypeError(f"expand_hostlist() takes a str like 'gpu[01-04]', got {hostlist!r}")
    text = "".join(hostlist.split())  # Slurm ignores whitespace in host lists
    if not text:
        return []
    hosts: list[str] = []
    for expr in _split_top(text, hostlist):
        if not expr:
            raise ValueError(f"bad host list {hostlist!r}: an empty host between commas")
        hosts.extend(_expand_one(expr, hostlist))
        if len(hosts) > _MAX_HOSTS:
            raise ValueError(f"bad host list {hostlist!r}: more than {_MAX_HOSTS} hosts")
    return hosts
