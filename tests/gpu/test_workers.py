"""Device workers on fake devices: one child node per device, pinned processes and servers,
restarts after SIGKILL (links and monitors see ``"noconnection"``, supervisors restart pinned
children on the new worker), device tensors handed across worker processes, and clean-up.

Everything synchronises on messages and monitors: a pinned server's `init` announces itself,
and a worker's loss is seen as the ``Down`` of a process that ran on it. See
docs/architecture.md ("Devices") for how workers are started and restarted.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

import numbeam as nb

T = 15.0  # seconds any single wait may take (a worker's first start is a fresh interpreter)
DEVICES = ["fake:0", "fake:1"]


# -- what runs on the workers (module-level, so the workers import them by path) -------------


async def report(parent: nb.Pid, tag: Any) -> None:
    nb.send(parent, (tag, nb.device(), os.getpid(), nb.node()))


async def wait_forever() -> None:
    await nb.receive()


async def hold(parent: nb.Pid) -> None:
    """Keep every tensor received; acknowledge each with what this process sees of it."""
    held = []
    while True:
        t = await nb.receive()
        held.append(t)
        nb.send(parent, ("held", t.device, float(t.array().sum()), t._mem.key))


async def make_on_device(parent: nb.Pid, n: int) -> None:
    t = nb.tensors.build(
        n, "f64", lambda out: out.__setitem__(slice(None), np.arange(n)), device=nb.device()
    )
    nb.send(parent, ("made", t))


async def forward(to: nb.Pid, parent: nb.Pid) -> None:
    t = await nb.receive()
    nb.send(to, t)
    nb.send(parent, ("forwarded", t.device, t._mem.key))


class Echo(nb.GenServer):
    async def init(self, tag: str, notify: nb.Pid) -> None:
        self.tag = tag
        nb.send(notify, ("up", nb.self(), os.getpid(), nb.device()))

    async def handle_call(self, request: Any, caller: Any) -> Any:
        return (self.tag, request, nb.device(), os.getpid())


# -- helpers --------------------------------------------------------------------------------


async def on_device(device: str) -> tuple[str, int, str]:
    nb.spawn(report, nb.self(), "where", device=device)
    _, dev, os_pid, node = await nb.receive(
        lambda m: type(m) is tuple and m[0] == "where", timeout=T
    )
    return dev, os_pid, node


def children_of_this_process() -> list[int]:
    """OS pids of the processes whose parent is this test process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry))
    return found


def holders(key: tuple[int, int]) -> list[int]:
    """OS pids of this user's processes that map the file `key` (st_dev, st_ino)."""
    dev, ino = key
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 5 and parts[4] == str(ino):
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if os.makedev(major, minor) == dev:
                    found.append(int(entry))
                    break
    return found


# -- devices and pinning --------------------------------------------------------------------


async def test_each_device_has_a_worker_process_of_its_own() -> None:
    async with nb.Runtime(devices=DEVICES):
        assert nb.devices() == DEVICES
        assert nb.device() == "cpu"
        assert nb.gpu.workers()["fake:0"]["status"] == "stopped"  # started on first use
        dev0, pid0, node0 = await on_device("fake:0")
        dev1, pid1, _ = await on_device("fake:1")
        assert (dev0, dev1) == ("fake:0", "fake:1")
        assert len({pid0, pid1, os.getpid()}) == 3
        workers = nb.gpu.workers()
        assert workers["fake:0"] == {
            "node": node0,
            "os_pid": pid0,
            "restarts": 0,
            "status": "running",
        }
        assert workers["fake:1"]["os_pid"] == pid1
        assert node0 not in nb.nodes()  # workers are hidden nodes
        assert await on_device("cpu") == ("cpu", os.getpid(), nb.node())


async def test_eager_start_and_gpu_start() -> None:
    async with nb.Runtime(devices=DEVICES, start_workers="eager"):
        assert {w["status"] for w in nb.gpu.workers().values()} == {"starting"}
        workers = await nb.gpu.start(timeout=T)
        assert {w["status"] for w in workers.values()} == {"running"}
        assert all(w["os_pid"] for w in workers.values())


async def test_pinned_genserver_and_call() -> None:
    async with nb.Runtime(devices=DEVICES):
        pid = await Echo.start_link("e", nb.self(), device="fake:1", name="echo")
        _, _, os_pid, dev = await nb.receive(lambda m: m[0] == "up", timeout=T)
        assert dev == "fake:1"
        assert await nb.call(pid, "hi", timeout=T) == ("e", "hi", "fake:1", os_pid)
        node = nb.gpu.workers()["fake:1"]["node"]
        assert await nb.call(("echo", node), "named", timeout=T) == ("e", "named", "fake:1", os_pid)


@pytest.mark.parametrize("bad", ["fake:7", "cuda:0", "gpu:0", "fake", "cuda:-1", ""])
async def test_unknown_devices_raise_at_once(bad: str) -> None:
    async with nb.Runtime(devices=DEVICES):
        with pytest.raises(ValueError, match=r"fake:0, fake:1|bad device name"):
            nb.spawn(wait_forever, device=bad)
        with pytest.raises(ValueError, match=r"fake:0, fake:1|bad device name"):
            await Echo.start("x", nb.self(), device=bad)
        assert nb.processes() == [nb.self()]


async def test_device_argument_errors() -> None:
    async with nb.Runtime(devices=DEVICES):
        with pytest.raises(TypeError, match="device is a str"):
            nb.spawn(wait_forever, device=0)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not both"):
            nb.spawn(wait_forever, device="fake:0", node="b@127.0.0.1:1")
        with pytest.raises(TypeError, match=r"device=\.\.\."):
            nb.Child(wait_forever, device=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="args only"):
            nb.Child(wait_forever, kwargs={"a": 1}, device="fake:0")

        async def local() -> None:
            pass

        with pytest.raises(TypeError, match="module-level"):
            nb.spawn(local, device="fake:0")


async def test_a_runtime_without_devices_opens_no_socket() -> None:
    async with nb.Runtime(devices=[]):
        assert nb.node() == "nonode@nohost"
        assert nb.devices() == []
        assert nb.gpu.workers() == {}
        with pytest.raises(ValueError, match=r"this node has: cpu$"):
            nb.spawn(wait_forever, device="fake:0")


def test_fake_devices_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMBEAM_FAKE_DEVICES", "3")

    async def main() -> list[str]:
        return nb.devices()

    assert nb.run(main, uvloop=False)[-3:] == ["fake:0", "fake:1", "fake:2"]
    monkeypatch.setenv("NUMBEAM_FAKE_DEVICES", "three")
    with pytest.raises(ValueError, match="NUMBEAM_FAKE_DEVICES"):
        nb.run(main, uvloop=False)
    monkeypatch.setenv("NUMBEAM_DEVICES", "fake:1")
    monkeypatch.setenv("NUMBEAM_FAKE_DEVICES", "0")
    assert nb.run(main, uvloop=False) == ["fake:1"]


# -- restarts -------------------------------------------------------------------------------


async def test_supervisor_restarts_a_pinned_server_on_the_new_worker() -> None:
    async with nb.Runtime(devices=DEVICES):
        me = nb.self()
        sup = await nb.Supervisor.start_link(
            [nb.Child(Echo, args=("s", me), id="echo", device="fake:0")], intensity=1
        )
        _, pid, os_pid, _ = await nb.receive(lambda m: m[0] == "up", timeout=T)
        assert await nb.call(pid, 1, timeout=T) == ("s", 1, "fake:0", os_pid)
        ref = nb.monitor(pid)
        os.kill(os_pid, signal.SIGKILL)
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "noconnection"
        _, pid2, os_pid2, dev = await nb.receive(lambda m: m[0] == "up", timeout=T)
        assert (dev, pid2 != pid, os_pid2 != os_pid) == ("fake:0", True, True)
        assert await nb.call(pid2, 2, timeout=T) == ("s", 2, "fake:0", os_pid2)
        assert nb.is_alive(sup)
        assert (await nb.Supervisor.which_children(sup))[0][1] == pid2
        w = nb.gpu.workers()["fake:0"]
        assert (w["restarts"], w["os_pid"], w["status"]) == (1, os_pid2, "running")
        assert nb.gpu.workers()["fake:1"]["restarts"] == 0


async def test_links_and_monitors_see_noconnection() -> None:
    async with nb.Runtime(devices=DEVICES):
        nb.trap_exit(True)
        linked = nb.spawn_link(wait_forever, device="fake:0")
        watched, ref = nb.spawn_monitor(wait_forever, device="fake:0")
        _, os_pid, _ = await on_device("fake:0")
        os.kill(os_pid, signal.SIGKILL)
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.ref, down.pid, down.reason) == (ref, watched, "noconnection")
        ex = await nb.receive(nb.Exit, timeout=T)
        assert (ex.pid, ex.reason) == (linked, "noconnection")


async def test_spawning_on_a_restarting_worker_waits_for_it() -> None:
    async with nb.Runtime(devices=DEVICES):
        nb.spawn_monitor(wait_forever, device="fake:0")
        _, old_os_pid, _ = await on_device("fake:0")
        os.kill(old_os_pid, signal.SIGKILL)
        assert (await nb.receive(nb.Down, timeout=T)).reason == "noconnection"
        # The loss is known: the worker is starting again. A spawn now waits for it.
        assert nb.gpu.workers()["fake:0"]["restarts"] == 1
        pid, _ = nb.spawn_monitor(report, nb.self(), "again", device="fake:0")
        msg = await nb.receive(lambda m: type(m) is tuple and m[0] == "again", timeout=T)
        assert msg[1] == "fake:0" and msg[2] != old_os_pid
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.pid, down.reason) == (pid, "normal")


async def test_a_worker_that_cannot_start_in_time_gives_noconnection() -> None:
    async with nb.Runtime(devices=["fake:0"], worker_start_timeout=0.01):
        pid, _ = nb.spawn_monitor(wait_forever, device="fake:0")
        down = await nb.receive(nb.Down, timeout=T)
        assert (down.pid, down.reason) == (pid, "noconnection")
        assert nb.gpu.workers()["fake:0"]["status"] == "restarting"


async def test_shutdown_stops_every_worker_and_spare() -> None:
    async with nb.Runtime(devices=DEVICES) as rt:
        await nb.gpu.start(timeout=T)
        workers_dir = rt.extensions["gpu.workers"].dir
        assert os.path.isdir(workers_dir)
        children = children_of_this_process()
        pids = {w["os_pid"] for w in nb.gpu.workers().values()}
        assert pids <= set(children)
    assert [p for p in children if os.path.exists(f"/proc/{p}")] == []
    assert not os.path.exists(workers_dir)


# -- device tensors across worker processes -------------------------------------------------


async def test_a_device_tensor_handed_to_its_worker_is_the_same_memory() -> None:
    async with nb.Runtime(devices=DEVICES):
        t = nb.tensor(np.arange(1 << 20, dtype=np.float32), device="fake:0")
        holder = nb.spawn(hold, nb.self(), device="fake:0")
        nb.send(holder, t)
        _, dev, total, key = await nb.receive(lambda m: m[0] == "held", timeout=T)
        assert (dev, total, key) == ("fake:0", float(t.array().sum()), t._mem.key)


async def test_a_device_tensor_sent_to_another_devices_worker_is_copied_there() -> None:
    async with nb.Runtime(devices=DEVICES):
        t = nb.tensor(np.arange(100_000, dtype=np.float64), device="fake:0")
        holder = nb.spawn(hold, nb.self(), device="fake:1")
        nb.send(holder, t)
        _, dev, total, key = await nb.receive(lambda m: m[0] == "held", timeout=T)
        assert (dev, total) == ("fake:1", float(np.arange(100_000).sum()))
        assert key != t._mem.key


async def test_tensors_made_on_a_worker_come_back_and_move_between_workers() -> None:
    async with nb.Runtime(devices=DEVICES):
        nb.spawn(make_on_device, nb.self(), 50_000, device="fake:0")
        _, t = await nb.receive(lambda m: type(m) is tuple and m[0] == "made", timeout=T)
        assert t.device == "fake:0"
        assert np.array_equal(t.array(), np.arange(50_000, dtype=np.float64))
        holder = nb.spawn(hold, nb.self(), device="fake:1")
        fwd = nb.spawn(forward, holder, nb.self(), device="fake:0")
        nb.send(fwd, t)
        _, fdev, fkey = await nb.receive(lambda m: m[0] == "forwarded", timeout=T)
        assert (fdev, fkey) == ("fake:0", t._mem.key)  # the worker of fake:0 got the same memory
        _, dev, total, key = await nb.receive(lambda m: m[0] == "held", timeout=T)
        assert (dev, total) == ("fake:1", float(np.arange(50_000).sum()))
        assert key != t._mem.key


def _fake0() -> dict[str, int]:
    return nb.tensors.stats()["devices"].get(
        "fake:0", {"buffers": 0, "bytes": 0, "exported": 0, "imported": 0}
    )


async def test_memory_is_released_after_the_holder_is_killed() -> None:
    async with nb.Runtime(devices=DEVICES):
        base = _fake0()
        t = nb.tensor(np.ones(2 << 20, dtype=np.float32), device="fake:0")  # 8 MiB
        key = t._mem.key
        holder = nb.spawn(hold, nb.self(), device="fake:0")
        nb.send(holder, t)
        await nb.receive(lambda m: m[0] == "held", timeout=T)
        _, os_pid, _ = await on_device("fake:0")
        assert os_pid in holders(key)
        assert _fake0()["buffers"] == base["buffers"] + 1
        nb.monitor(holder)
        os.kill(os_pid, signal.SIGKILL)
        assert (await nb.receive(nb.Down, timeout=T)).reason == "noconnection"
        del t
        after = _fake0()
        assert (after["buffers"], after["bytes"]) == (base["buffers"], base["bytes"])
        assert holders(key) == []


async def test_a_worker_killed_with_a_tensor_in_flight_loses_nothing_else() -> None:
    async with nb.Runtime(devices=DEVICES):
        base = _fake0()
        holder = nb.spawn(hold, nb.self(), device="fake:0")
        _, os_pid, _ = await on_device("fake:0")
        ref = nb.monitor(holder)
        t = nb.tensor(np.ones(1 << 20, dtype=np.float32), device="fake:0")
        key = t._mem.key
        nb.send(holder, t)
        os.kill(os_pid, signal.SIGKILL)
        down = await nb.receive(lambda m: type(m) is nb.Down and m.ref == ref, timeout=T)
        assert down.reason == "noconnection"
        del t
        assert _fake0()["buffers"] == base["buffers"]
        # The worker is back, and a tensor goes through as before.
        holder = nb.spawn(hold, nb.self(), device="fake:0")
        t2 = nb.tensor(np.full(1000, 2.0, dtype=np.float32), device="fake:0")
        nb.send(holder, t2)
        msg = await nb.receive(lambda m: type(m) is tuple and m[0] == "held", timeout=T)
        assert msg[1:3] == ("fake:0", 2000.0)
        assert os_pid not in holders(key)
