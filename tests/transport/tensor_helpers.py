"""Tensor agents that tests spawn on other nodes (``tensor_helpers:agent``), and helpers that
read ``/proc`` to find where a tensor's bytes are mapped."""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np

import numbeam as nb

W = 20.0  # bound on every wait inside an agent


# ---- /proc ------------------------------------------------------------------------------------


def data_address(t: nb.Tensor) -> int:
    """The address of a tensor's first byte in this process."""
    return int(t.numpy().__array_interface__["data"][0])


def maps_line(addr: int, pid: int | str = "self") -> str | None:
    """The line of ``/proc/<pid>/maps`` whose range holds ``addr``."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            lo, _, hi = line.split(None, 1)[0].partition("-")
            if int(lo, 16) <= addr < int(hi, 16):
                return line.rstrip("\n")
    return None


def parse_maps_line(line: str) -> dict[str, str]:
    """``perms``, ``dev`` (``"00:1a"``), ``inode`` and ``path`` of a maps line."""
    parts = line.split(None, 5)
    return {
        "perms": parts[1],
        "dev": parts[3],
        "inode": parts[4],
        "path": parts[5] if len(parts) > 5 else "",
    }


def file_key(dev: int, ino: int) -> tuple[str, str]:
    """A file's (device, inode) in the notation of ``/proc/<pid>/maps``."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}", str(ino)


def describe(t: Any) -> dict[str, Any]:
    """What a test checks about a tensor here: type, layout, a checksum, and its mapping."""
    if not isinstance(t, nb.Tensor):
        return {"type": type(t).__name__}
    a = t.numpy()
    flat = a.reshape(-1)
    n = flat.size
    picks = sorted({0, min(1, n - 1), n // 2, n - 1}) if n else []
    out: dict[str, Any] = {
        "type": "Tensor",
        "shared": t.shared,
        "shape": list(t.shape),
        "dtype": t.dtype,
        "sum": float(np.sum(a, dtype=np.float64)),
        "picks": [float(flat[i]) for i in picks],
        "pid": os.getpid(),
        "addr": int(a.__array_interface__["data"][0]),
        "maps": None,
    }
    if t.shared:
        out["maps"] = maps_line(out["addr"])
    return out


# ---- the agent --------------------------------------------------------------------------------


def _is_op(m: Any) -> bool:
    # Only requests: data messages ("payload", "marker") wait in the mailbox until asked for.
    return type(m) is tuple and len(m) >= 1 and (m[0] == "stop" or m[0] in _HANDLERS)


async def agent(report_to: nb.Pid) -> None:
    """Announce ``("agent", self)``, then serve requests ``(op, ...)``, each answered to
    `report_to` with a tuple ``(op, self, ...)``, until ``("stop",)``.

    Each request is handled in a function of its own, so nothing it touched stays referenced
    here: what the agent holds is exactly ``held``.
    """
    me = nb.self()
    nb.send(report_to, ("agent", me))
    held: dict[str, Any] = {}
    while True:
        msg = await nb.receive(_is_op)
        if msg[0] == "stop":
            return
        await _HANDLERS[msg[0]](me, report_to, held, msg)
        del msg


async def _hold(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Keep a tensor and say where it is mapped here."""
    held[msg[1]] = msg[2]
    nb.send(to, ("hold", me, describe(msg[2]), nb.tensors.stats()))


async def _drop(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    del held[msg[1]]
    gc.collect()
    nb.send(to, ("drop", me, nb.tensors.stats()))


async def _stats(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    nb.send(to, ("stats", me, nb.tensors.stats()))


async def _echo(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Send the value back as it arrived."""
    nb.send(to, ("echo", me, msg[1], describe(msg[1])))


async def _forward(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Pass a message on to another process."""
    nb.send(msg[1], msg[2])
    nb.send(to, ("forward", me))


async def _alloc(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Make a tensor of ``msg[1]`` zero bytes here; answer the error if that fails."""
    try:
        t = nb.tensor(np.zeros(msg[1], np.uint8))
    except Exception as e:
        nb.send(to, ("alloc", me, type(e).__name__, str(e)))
    else:
        nb.send(to, ("alloc", me, None, t.nbytes, t.shared))


async def _types(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Describe each value of a tuple, and send the tuple back."""
    nb.send(to, ("types", me, [describe(v) for v in msg[1]], msg[1]))


async def _send_then_mark(
    me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]
) -> None:
    """Send ``("payload", tensor of arange(n) f32)`` to ``msg[1]``, a marker behind it on the
    same channel, then tell `to`; the tensor stays held here."""
    _, target, n = msg
    t = held["sent"] = nb.tensor(np.arange(n, dtype=np.float32))
    nb.send(target, ("payload", t))
    nb.send(target, ("marker",))
    nb.send(to, ("send_then_mark", me, describe(t)))


async def _await_marker(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Receive the marker only (the payload ahead of it stays queued), then watch the node
    ``msg[1]`` it came from."""
    await nb.receive(lambda m: m == ("marker",), timeout=W)
    nb.monitor_node(msg[1])
    nb.send(to, ("await_marker", me, nb.tensors.stats()))


async def _await_nodedown(
    me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]
) -> None:
    node = msg[1]
    down = await nb.receive(lambda m: type(m) is nb.NodeDown and m.name == node, timeout=W)
    nb.send(to, ("await_nodedown", me, down.reason))


async def _take_payload(me: nb.Pid, to: nb.Pid, held: dict[str, Any], msg: tuple[Any, ...]) -> None:
    """Receive the queued payload, keep it, describe it."""
    got = await nb.receive(
        lambda m: type(m) is tuple and len(m) == 2 and m[0] == "payload", timeout=W
    )
    held["payload"] = got[1]
    nb.send(to, ("take_payload", me, describe(got[1])))


_HANDLERS = {
    "hold": _hold,
    "drop": _drop,
    "stats": _stats,
    "echo": _echo,
    "forward": _forward,
    "alloc": _alloc,
    "types": _types,
    "send_then_mark": _send_then_mark,
    "await_marker": _await_marker,
    "await_nodedown": _await_nodedown,
    "take_payload": _take_payload,
}


async def sum_first_elements(report_to: nb.Pid, n: int) -> None:
    """Receive `n` tensors; report the sum of their first elements, and how many of them were
    not a read-only mapping of the sender's file (a copy)."""
    total = 0
    copies = 0
    for _ in range(n):
        t = await nb.receive(nb.Tensor)
        total += int(t.numpy()[0])
        line = maps_line(data_address(t))
        copies += line is None or parse_maps_line(line)["perms"] != "r--s"
        del t
    nb.send(report_to, ("sums", total, copies))
