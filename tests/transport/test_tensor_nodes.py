"""Tensors between real nodes on one host: handles mapped read-only (no copy), freed across
processes by the kernel even after SIGKILL, surviving their sender's death; the other-host
path (bytes as frames); a memory budget; round trips, forwarding, and the ipc:// transport.

Where the bytes are is checked in ``/proc/<pid>/maps``, never by timing: a handle received
from a node on the host is a read-only shared mapping (``r--s``) of the sender's very file
(same device and inode), an unnamed tmpfs file that no longer has a name (``(deleted)``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import numpy as np
import pytest
from cluster import COOKIE
from conftest import T, ask, node_runtime, start_agent
from tensor_helpers import data_address, describe, file_key, maps_line, parse_maps_line

import numbeam as nb

MB = 2**20


async def agent(node: str) -> nb.Pid:
    return await start_agent(node, "tensor_helpers:agent")


async def answer(op: str, pid: nb.Pid) -> tuple:
    """What follows ``(op, pid)`` in the agent's answer to a request sent without `ask`."""
    msg = await nb.receive(lambda m: type(m) is tuple and m[:2] == (op, pid), timeout=T)
    return msg[2:]


def own_mapping(t: nb.Tensor) -> dict[str, str]:
    line = maps_line(data_address(t))
    assert line is not None
    return parse_maps_line(line)


def assert_received_handle(theirs: dict[str, str], mine: dict[str, str]) -> None:
    """`theirs` maps the very file of `mine`, read-only, and the file has no name."""
    assert (theirs["dev"], theirs["inode"]) == (mine["dev"], mine["inode"])
    assert theirs["perms"] == "r--s"
    assert mine["perms"] == "rw-s"
    path = theirs["path"]
    assert path.startswith(("/dev/shm/#", "/memfd:")), path
    assert path.endswith("(deleted)"), path


def holders(key: tuple[str, str]) -> list[str]:
    """Every process of this user that maps the file `key` (maps notation) or has it open.

    Processes come and go during the scan: one that vanishes, or hides its files, is skipped.
    """
    dev, ino = key
    uid = os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    m = parse_maps_line(line.rstrip("\n")) if len(line.split()) >= 5 else None
                    if m is not None and (m["dev"], m["inode"]) == (dev, ino):
                        found.append(f"{entry} maps {line.strip()}")
                        break
            for fd in os.listdir(f"/proc/{entry}/fd"):
                try:
                    st = os.stat(f"/proc/{entry}/fd/{fd}")
                except OSError:  # closed meanwhile, or not a file we may look at
                    continue
                if file_key(st.st_dev, st.st_ino) == key:
                    found.append(f"{entry} fd {fd} -> {os.readlink(f'/proc/{entry}/fd/{fd}')}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def maps_has(pid: int | str, key: tuple[str, str]) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and (parts[3], parts[4]) == key:
                return True
    return False


def shm_names() -> set[str]:
    # POSIX semaphores ("sem.*") are multiprocessing's locks, in whatever other program runs
    # on this machine meanwhile; numbeam makes none, nor any other name.
    return {n for n in os.listdir("/dev/shm") if not n.startswith("sem.")}


@pytest.fixture
def shm_untouched():
    """Nothing is left with a name in /dev/shm by the test."""
    before = shm_names()
    yield
    assert shm_names() - before == set()


# ---- same host: handles ------------------------------------------------------------------------


async def test_a_256mb_tensor_is_mapped_read_only_by_the_other_node(nodes, shm_untouched):
    b = await nodes("b")
    n = 64 * MB  # float32: 256 MB
    builder = nb.tensors.Builder((n,), "f32")
    builder.array.reshape(-1, 1024)[:] = np.arange(1024, dtype=np.float32)  # no temporaries
    t = builder.freeze()
    expected_sum = float(n // 1024 * (1023 * 1024 // 2))
    async with node_runtime():
        pid = await agent(b.name)
        got, stats = await ask(pid, "hold", "big", t)
        mine = own_mapping(t)
        assert got["type"] == "Tensor" and got["shared"]
        assert (got["shape"], got["dtype"]) == ([n], "f32")
        assert got["sum"] == expected_sum
        assert got["picks"] == [0.0, 1.0, float((n // 2) % 1024), 1023.0]
        assert got["pid"] == b.pid
        assert_received_handle(parse_maps_line(got["maps"]), mine)
        assert stats["mapped"] == 1 and stats["mapped_bytes"] == 256 * MB
        assert stats["bytes"] == 0  # it allocated nothing: no copy was made there


async def test_a_holder_killed_by_sigkill_frees_the_bytes(nodes, shm_untouched):
    h = await nodes("h")
    async with node_runtime():
        pid = await agent(h.name)
        t = nb.tensors.build((16 * MB,), "f32", lambda out: out.fill(7.0))  # 64 MB
        got, stats = await ask(pid, "hold", "x", t)
        mine = own_mapping(t)
        theirs = parse_maps_line(got["maps"])
        assert_received_handle(theirs, mine)
        key = (theirs["dev"], theirs["inode"])
        assert got["sum"] == 7.0 * 16 * MB and stats["mapped"] == 1
        del t
        gc.collect()
        assert not maps_has("self", key)  # we let go of it...
        held_by = holders(key)
        assert not [x for x in held_by if x.startswith(f"{os.getpid()} ")]
        # ...the holder still maps it and has its descriptor open
        assert maps_has(h.pid, key)
        assert {x.split()[1] for x in held_by if x.startswith(f"{h.pid} ")} == {"maps", "fd"}
        h.kill(signal.SIGKILL)
        assert await h.wait(T) == -signal.SIGKILL
        assert holders(key) == []  # nobody maps it or has it open: the kernel freed it


async def test_a_tensor_in_flight_survives_its_senders_death(nodes, shm_untouched):
    s = await nodes("s")
    r = await nodes("r")
    n = 8 * MB  # float32: 32 MB
    async with node_runtime():
        sender = await agent(s.name)
        receiver = await agent(r.name)
        nb.send(receiver, ("await_marker", s.name))
        (sent,) = await ask(sender, "send_then_mark", receiver, n)
        assert sent["sum"] == float(n * (n - 1) // 2)
        (stats,) = await answer("await_marker", receiver)
        assert stats["mapped"] == 1  # the payload is queued there, mapped, not yet read
        s.kill(signal.SIGKILL)
        assert await s.wait(T) == -signal.SIGKILL
        (reason,) = await ask(receiver, "await_nodedown", s.name)
        assert reason in ("connection_closed", "noconnection")
        (got,) = await ask(receiver, "take_payload")
        assert got["type"] == "Tensor" and got["shape"] == [n]
        assert got["sum"] == float(n * (n - 1) // 2)
        assert got["picks"] == [0.0, 1.0, float(n // 2), float(n - 1)]
        assert parse_maps_line(got["maps"])["perms"] == "r--s"
        (stats,) = await ask(receiver, "drop", "payload")
        assert stats["mapped"] == 0 and stats["mapped_bytes"] == 0


# ---- other hosts: bytes as frames --------------------------------------------------------------


async def test_without_handles_a_tensor_is_copied_into_the_receivers_shared_memory(
    nodes, shm_untouched
):
    x = await nodes("x", env={"NUMBEAM_TENSOR_HANDLES": "0"})
    t = nb.tensor(np.arange(2 * MB, dtype=np.float32))  # 8 MB
    async with node_runtime():
        pid = await agent(x.name)
        back, got = await ask(pid, "echo", t)  # it describes what it got, and sends it back
        mine = own_mapping(t)
        assert got["sum"] == float(2 * MB * (2 * MB - 1) // 2)
        assert got["shared"]  # landed in the receiver's own shared memory...
        theirs = parse_maps_line(got["maps"])
        assert theirs["perms"] == "rw-s"  # ...in a segment of its own: a copy
        assert (theirs["dev"], theirs["inode"]) != (mine["dev"], mine["inode"])
        # The way back is bytes too, copied into a fresh segment of ours.
        assert isinstance(back, nb.Tensor) and back.shared
        assert back.dtype == "f32" and back.shape == t.shape
        np.testing.assert_array_equal(back.numpy(), t.numpy())
        again = own_mapping(back)
        assert again["perms"] == "rw-s"
        assert (again["dev"], again["inode"]) not in {
            (mine["dev"], mine["inode"]),
            (theirs["dev"], theirs["inode"]),
        }


async def test_an_allocation_over_the_budget_raises_memoryerror_and_the_node_lives_on(
    nodes, shm_untouched
):
    b = await nodes("b", env={"NUMBEAM_TENSOR_BUDGET": str(16 * MB)})
    async with node_runtime():
        pid = await agent(b.name)
        kind, message = await ask(pid, "alloc", 32 * MB)
        assert kind == "MemoryError"
        assert "budget" in message
        assert await ask(pid, "alloc", 1 * MB) == (None, 1 * MB, True)
        (stats,) = await ask(pid, "stats")
        assert stats["budget"] == 16 * MB
        assert stats["buffers"] == 0  # the 1 MB tensor is gone, and nothing half-made stayed


# ---- round trips, forwarding, messages ---------------------------------------------------------


async def test_round_trips_give_back_the_same_mapping_and_forwarding_passes_the_file_on(
    nodes, shm_untouched
):
    b = await nodes("b")
    c = await nodes("c")
    small = nb.tensor(np.arange(256, dtype=np.float32))  # 1 KiB: a block of the arena
    large = nb.tensor(np.arange(1 * MB, dtype=np.float64))  # 8 MB: a segment of its own
    assert small.shared and large.shared
    async with node_runtime():
        pb = await agent(b.name)
        pc = await agent(c.name)
        for t in (small, large):
            back, there = await ask(pb, "echo", t)
            assert isinstance(back, nb.Tensor)
            assert (back.dtype, back.shape) == (t.dtype, t.shape)
            np.testing.assert_array_equal(back.numpy(), t.numpy())
            assert data_address(back) == data_address(t)  # our own mapping, reused
            assert_received_handle(parse_maps_line(there["maps"]), own_mapping(t))
        # test -> b -> c: c maps the very file we made, through b's descriptor.
        assert await ask(pb, "forward", pc, ("hold", "fwd", large)) == ()
        got, stats = await answer("hold", pc)  # c answers us
        assert got["sum"] == float(MB * (MB - 1) // 2) and got["pid"] == c.pid
        assert_received_handle(parse_maps_line(got["maps"]), own_mapping(large))
        assert stats["mapped"] == 1


async def test_tensors_inside_messages_keep_their_types(nodes, shm_untouched):
    b = await nodes("b")
    inline = nb.tensor([1, 2, 3], "s32")  # 12 bytes: kept inline
    shared = nb.tensor(np.linspace(0, 1, 1000, dtype=np.float32))
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert not inline.shared and shared.shared
    async with node_runtime():
        pid = await agent(b.name)
        there, back = await ask(pid, "types", (inline, shared, arr))
        assert [d["type"] for d in there] == ["Tensor", "Tensor", "ndarray"]
        assert [d["shared"] for d in there[:2]] == [False, True]
        assert there[0]["sum"] == 6.0 and there[0]["dtype"] == "s32"
        assert parse_maps_line(there[1]["maps"])["perms"] == "r--s"
        assert type(back) is tuple and len(back) == 3
        b_inline, b_shared, b_arr = back
        assert type(b_inline) is nb.Tensor and type(b_shared) is nb.Tensor
        assert type(b_arr) is np.ndarray and b_arr.dtype == np.int16
        assert b_inline.tolist() == [1, 2, 3] and b_inline.dtype == "s32"
        assert not b_inline.shared and b_shared.shared
        np.testing.assert_array_equal(b_shared.numpy(), shared.numpy())
        np.testing.assert_array_equal(b_arr, arr)


async def test_a_tensor_dropped_right_after_send_still_arrives(nodes, shm_untouched):
    # The message holds the only reference, on both sides: the segment's descriptor must stay
    # open until it has been passed, though the tensor is gone before the batch is flushed.
    b = await nodes("b")
    async with node_runtime():
        pid = await agent(b.name)
        nb.send(pid, ("echo", nb.tensor(np.arange(100_000, dtype=np.float64))))
        back, there = await answer("echo", pid)
        assert there["sum"] == float(100_000 * 99_999 // 2)
        assert parse_maps_line(there["maps"])["perms"] == "r--s"
        np.testing.assert_array_equal(back.numpy(), np.arange(100_000, dtype=np.float64))
        nb.send(pid, ("echo", nb.tensor(np.arange(200, dtype=np.int32))))  # an arena block
        back, there = await answer("echo", pid)
        assert there["sum"] == float(200 * 199 // 2)
        assert back.tolist() == list(range(200))


async def test_many_batches_of_handles_wait_for_a_full_receiver_and_all_arrive(
    nodes, shm_untouched
):
    # Each tensor goes in a batch of its own (the sender yields after each send), each batch
    # passes its descriptor in a datagram, and the kernel queues only a few datagrams per
    # receiver: the sender waits for room (back-pressure), never falls back to a copy, loses
    # nothing.
    b = await nodes("b")
    n = 300
    async with node_runtime():
        pid = nb.spawn("tensor_helpers:sum_first_elements", nb.self(), n, node=b.name)
        for i in range(n):
            nb.send(pid, nb.tensor(np.full(70_000, i, np.int32)))  # 280 KB: a segment each
            await asyncio.sleep(0)  # a yield, not a wait: lets this batch go out alone
        _, total, copies = await nb.receive(lambda m: m[0] == "sums", timeout=T)
        assert total == n * (n - 1) // 2
        assert copies == 0


# ---- the ipc:// transport ----------------------------------------------------------------------


async def test_handles_cross_ipc_nodes_too(nodes, tmp_path, shm_untouched):
    b = await nodes(f"b@ipc://{tmp_path}/b.sock")
    t = nb.tensor(np.arange(1 * MB, dtype=np.int32))  # 4 MB
    async with nb.Runtime(node="t@ipc://", cookie=COOKIE):
        pid = await agent(b.name)
        back, there = await ask(pid, "echo", t)
        assert there["sum"] == float(MB * (MB - 1) // 2)
        assert_received_handle(parse_maps_line(there["maps"]), own_mapping(t))
        assert data_address(back) == data_address(t)
        np.testing.assert_array_equal(back.numpy(), t.numpy())


def test_the_proc_helpers_find_a_tensors_mapping_and_descriptor():
    # What the tests above rely on: describe() and holders() see a segment of this process.
    t = nb.tensor(np.arange(1000, dtype=np.float32))
    d = describe(t)
    assert d["shared"] and d["sum"] == float(999 * 1000 // 2)
    assert d["picks"] == [0.0, 1.0, 500.0, 999.0]
    m = parse_maps_line(d["maps"])
    assert m["perms"] == "rw-s"
    st = os.fstat(t._mem.fd)  # (private: the descriptor of the tensor's segment)
    key = file_key(st.st_dev, st.st_ino)
    assert (m["dev"], m["inode"]) == key
    mine = {x.split()[1] for x in holders(key) if x.startswith(f"{os.getpid()} ")}
    assert mine == {"fd", "maps"}  # (two descriptors, in fact: mmap keeps a duplicate)
