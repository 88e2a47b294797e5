"""The live observer (node option ``observer=PORT``, ``numbeam observer``) and ``numbeam remsh``,
through their real servers and subprocesses: the page, ``/metrics`` parsed with
prometheus_client's parser, Server-Sent Events updates, process details, actions refused
without ``observer_control=True``, a cluster seen from one node and from a hidden one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster import COOKIE
from conftest import T, node_runtime
from prometheus_client.parser import text_string_to_metric_families

import numbeam as nb


async def forever() -> None:
    await nb.receive(lambda m: False)


class Crashy(nb.GenServer):
    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on purpose")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=T)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def get_metrics(http: aiohttp.ClientSession, url: str) -> dict[Any, float]:
    async with http.get(url + "metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return metrics(await r.text())


def by_name(node: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((p for p in node["processes"] if p["name"] == name), None)


async def test_page_snapshot_and_supervision_tree(
    http: aiohttp.ClientSession, crash_log: Any
) -> None:
    async with nb.Runtime(observer=0):
        url = nb.observer.url()
        assert url is not None and url.startswith("http://127.0.0.1:")
        async with http.get(url) as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
        assert "numbeam observer" in page and 'new EventSource("/events"' in page
        sup = await nb.Supervisor.start_link(
            [nb.Child(Crashy, id="crashy"), nb.Child(nb.Supervisor, args=([],), id="sub")],
            name="root_sup",
        )
        [(_, child, _), (_, sub, _)] = await nb.Supervisor.which_children(sup)
        nb.telemetry.attach(
            "t", ("numbeam", "supervisor", "restart"), lambda *a: nb.send(me, "restarted")
        )
        me = nb.self()
        try:
            nb.cast(child, "crash")
            assert await nb.receive(lambda m: m == "restarted", timeout=T) == "restarted"
        finally:
            nb.telemetry.detach("t")
        snap = await get_json(http, url + "api/snapshot")
        assert snap["observer"] == nb.node() and snap["control"] is False
        [node] = snap["nodes"]
        row = by_name(node, "root_sup")
        assert row is not None and row["supervisor"] and row["restarts"] == 1
        assert row["function"] == "Supervisor" and row["status"] == "waiting"
        trees = {t["pid"]: t for t in node["supervisors"]}
        root = trees[repr(sup)]
        assert root["restarts"] == 1 and root["name"] == "root_sup"
        [(_, new_child, _), _] = await nb.Supervisor.which_children(sup)
        assert root["children"] == [
            {"id": "'crashy'", "pid": repr(new_child), "type": "worker"},
            {"id": "'sub'", "pid": repr(sub), "type": "supervisor"},
        ]
        assert trees[repr(sub)]["children"] == []
        assert node["process_count"] == len(nb.processes())  # the snapshot's own one aside
        assert node["tensors"]["bytes"] >= 0 and node["workers"] == {}


async def test_metrics_follow_processes_and_restarts(
    http: aiohttp.ClientSession, crash_log: Any
) -> None:
    async with nb.Runtime(observer=0):
        url = nb.observer.url()
        assert url is not None
        node = (("node", nb.node()),)
        before = await get_metrics(http, url)
        pids = [nb.spawn(forever) for _ in range(5)]
        after = await get_metrics(http, url)
        assert after[("numbeam_processes", node)] == before[("numbeam_processes", node)] + 5
        for pid in pids:
            nb.exit(pid, "kill")
        ref = nb.monitor(pids[-1])
        await nb.receive(lambda m: isinstance(m, nb.Down) and m.ref == ref, timeout=T)
        gone = await get_metrics(http, url)
        assert gone[("numbeam_processes", node)] == before[("numbeam_processes", node)]
        assert gone[("numbeam_messages_received_total", node)] > 0
        assert gone[("numbeam_run_queue_length", node)] >= 0
        assert ("numbeam_tensor_bytes", (("device", "cpu"), *node)) in gone
        assert gone[("numbeam_node_connections", node)] == 0

        sup = await nb.Supervisor.start_link([nb.Child(Crashy, id="c")], name="msup")
        [(_, child, _)] = await nb.Supervisor.which_children(sup)
        ref = nb.monitor(child)
        nb.cast(child, "crash")
        await nb.receive(lambda m: isinstance(m, nb.Down) and m.ref == ref, timeout=T)
        await nb.Supervisor.which_children(sup)  # (its restart is done once it answers)
        m = await get_metrics(http, url)
        key = ("numbeam_supervisor_restarts_total", (("node", nb.node()), ("supervisor", "msup")))
        assert m[key] == 1


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next Server-Sent Event's data."""
    data = []
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), T)).decode().rstrip("\n")
        if line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            return json.loads("\n".join(data))  # type: ignore[no-any-return]


async def test_events_stream_shows_a_new_process(http: aiohttp.ClientSession) -> None:
    async with nb.Runtime(observer=0):
        url = nb.observer.url()
        async with http.get(f"{url}events?interval=0.1") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            first = await read_event(resp)
            assert by_name(first["nodes"][0], "newcomer") is None
            nb.spawn(forever, name="newcomer")
            while True:  # bounded by read_event's timeout
                snap = await read_event(resp)
                if by_name(snap["nodes"][0], "newcomer") is not None:
                    break


async def test_process_details_and_actions_refused_without_control(
    http: aiohttp.ClientSession,
) -> None:
    async with nb.Runtime(observer=0):
        url = nb.observer.url()
        pid = nb.spawn(forever, name="target")
        nb.send(pid, "hello")
        q = {"node": nb.node(), "id": str(pid.id), "creation": str(pid.creation)}
        info = await get_json(
            http, url + "api/process?" + "&".join(f"{k}={v}" for k, v in q.items())
        )
        assert info["registered_name"] == "target" and info["messages_in"] == 1
        assert info["message_queue_len"] == 1 and info["pid"] == repr(pid)
        assert info["current_function"].startswith("forever (test_observer.py:")
        async with http.get(url + "api/process", params={"node": nb.node()}) as r:
            assert r.status == 400
        async with http.post(url + "api/kill", json=q) as r:
            assert r.status == 403
            assert "observer_control=True" in await r.text()
        assert nb.is_alive(pid)
        async with http.get(url + "api/process", params={**q, "id": "999999"}) as r:
            assert r.status == 404


async def test_kill_with_control(http: aiohttp.ClientSession) -> None:
    async with nb.Runtime(observer=0, observer_control=True):
        url = nb.observer.url()
        pid, ref = nb.spawn_monitor(forever)
        snap = await get_json(http, url + "api/snapshot")
        assert snap["control"] is True
        q = {"node": nb.node(), "id": pid.id, "creation": pid.creation}
        async with http.post(url + "api/kill", data=json.dumps(q)) as r:  # not as JSON
            assert r.status == 415
        assert nb.is_alive(pid)
        async with http.post(url + "api/kill", json=q) as r:
            assert r.status == 200 and await r.json() == {"killed": True}
        down = await nb.receive(nb.Down, timeout=T)
        assert down.ref == ref and down.reason == "killed"


def test_observer_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="observer must be a TCP port"):
        nb.NodeOptions(observer=70000)
    with pytest.raises(ValueError, match="observer must be a TCP port"):
        nb.NodeOptions(observer="8080")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="observer_control must be a bool"):
        nb.NodeOptions(observer_control=1)  # type: ignore[arg-type]
    assert nb.NodeOptions().observer_host == "127.0.0.1"
    # Not from the environment: a node's device workers inherit it.
    monkeypatch.setenv("NUMBEAM_OBSERVER", "8484")
    monkeypatch.setenv("NUMBEAM_OBSERVER_CONTROL", "1")
    opts = nb.NodeOptions.resolve()
    assert opts.observer is None and opts.observer_control is True


async def test_a_taken_port_fails_the_start_cleanly() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with nb.Runtime(observer=port):
                pass
    async with nb.Runtime(observer=port):  # nothing of the failed start is left behind
        assert nb.observer.url() == f"http://127.0.0.1:{port}/"


async def test_the_page_shows_every_node_of_the_cluster(
    nodes: Any, http: aiohttp.ClientSession
) -> None:
    b = await nodes("b")
    async with node_runtime(observer=0):
        me = nb.self()
        nb.telemetry.attach_many(
            "node-events",
            [("numbeam", "node", "up"), ("numbeam", "node", "down")],
            lambda event, m, md: nb.send(me, (event[-1], m, md)),
        )
        try:
            assert await asyncio.wait_for(nb.connect(b.name), T)
            _, m, md = await nb.receive(lambda x: x[0] == "up", timeout=T)
            assert md == {"node": nb.node(), "peer": b.name}
            assert isinstance(m["system_time"], int)
            await the_page_shows_both_nodes(http, b.name)
            assert nb.disconnect(b.name)
            _, m, md = await nb.receive(lambda x: x[0] == "down", timeout=T)
            assert md == {"node": nb.node(), "peer": b.name, "reason": "disconnect"}
        finally:
            nb.telemetry.detach("node-events")


async def the_page_shows_both_nodes(http: aiohttp.ClientSession, b: str) -> None:
    """The observer of this node shows node `b` too, and a process of b's details."""
    remote = nb.spawn("observer_helpers:register_and_wait", nb.self(), "remote_one", node=b)
    assert await nb.receive(lambda m: m[0] == "registered", timeout=T) == ("registered", remote)
    url = nb.observer.url()
    snap = await get_json(http, url + "api/snapshot")
    names = {n["node"]: n for n in snap["nodes"]}
    assert set(names) == {nb.node(), b}
    row = by_name(names[b], "remote_one")
    assert row is not None and row["pid"] == repr(remote)
    q = {"node": b, "id": row["id"], "creation": row["creation"]}
    info = await get_json(http, url + "api/process?" + "&".join(f"{k}={v}" for k, v in q.items()))
    assert info["registered_name"] == "remote_one" and info["node"] == b


async def test_device_workers_are_shown_as_nodes_with_their_processes(
    http: aiohttp.ClientSession,
) -> None:
    async with nb.Runtime(observer=0, devices=["fake:0"], start_workers="eager"):
        workers = await nb.gpu.start(timeout=T)
        pinned = nb.spawn(forever, name="on_the_device", device="fake:0")
        snap = await get_json(http, nb.observer.url() + "api/snapshot")
        nodes = {n["node"]: n for n in snap["nodes"]}
        mine = nodes[nb.node()]
        assert mine["devices"] == ["fake:0"] and mine["workers"]["fake:0"]["status"] == "running"
        worker = nodes[workers["fake:0"]["node"]]
        assert worker["device"] == "fake:0"
        row = by_name(worker, "on_the_device")
        assert row is not None and row["pid"] == repr(pinned)


ROOT = Path(__file__).resolve().parents[2]


async def start_cli(*args: str, home: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBEAM_")}
    env.update(HOME=str(home), NUMBEAM_COOKIE=COOKIE, PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "numbeam",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), T)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_numbeam_node_observer_and_remsh_against_a_real_node(
    nodes: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # (b logs where its observer is, at start; a small local file)
    with open(tmp_path / "b.log", "wb") as log:  # noqa: ASYNC230
        b = await nodes("b", extra_args=("--observer", "0"), stderr=log)
    logged = (tmp_path / "b.log").read_text()
    # numbeam node --observer PORT: a command-line node serves the page and /metrics
    [b_url] = re.findall(r"observer at (http://127\.0\.0\.1:\d+/)", logged)
    b_metrics = await get_metrics(http, b_url)
    assert b_metrics[("numbeam_processes", (("node", b.name),))] >= 1
    async with node_runtime():
        nb.spawn("dist_helpers:start_counter", nb.self(), "counter", 41, node=b.name)
        await nb.receive(lambda m: m[0] == "counter", timeout=T)
        observer = await start_cli("observer", b.name, "--port", "0", home=tmp_path)
        remsh = await start_cli("remsh", b.name, home=tmp_path)
        script = (
            "pids = await processes()\n"
            "print('count', len(pids))\n"
            "nb.cast(('counter', target), ('add', 1))\n"
            "print('counter', await nb.call(('counter', target), 'get'))\n"
            "1 / 0\n"
            "for i in range(2):\n"
            "    print('loop', i)\n"
            "\n"
            "print('nodes', nb.nodes() == [target])\n"
        )
        try:
            # numbeam observer: the page of the cluster, found through b; itself not shown
            assert observer.stdout is not None
            line = (await asyncio.wait_for(observer.stdout.readline(), T)).decode()
            assert line.startswith("numbeam observer http://127.0.0.1:"), line
            url = line.split()[2]
            snap = await get_json(http, url + "api/snapshot")
            seen = {n["node"] for n in snap["nodes"]}
            assert seen == {b.name, nb.node()}
            assert snap["observer"] not in seen
            nb.spawn("observer_helpers:report_nodes", nb.self(), node=b.name)
            msg = await nb.receive(lambda m: m[0] == "nodes", timeout=T)
            assert snap["observer"] not in msg[2]  # hidden: b does not list it
            # numbeam remsh: an asyncio REPL in the cluster, driven through its stdin
            out, err = await asyncio.wait_for(remsh.communicate(script.encode()), T)
        finally:
            await stop(observer)
            await stop(remsh)
    assert observer.returncode == 0
    text = out.decode()
    assert remsh.returncode == 0, text + err.decode()
    assert "counter 42" in text
    count = int(text.split("count ", 1)[1].split()[0])
    assert count >= 2  # the counter and the rpc's own process at least
    assert "ZeroDivisionError" in text  # reported, and the shell goes on
    assert "loop 0" in text and "loop 1" in text
    assert "nodes True" in text  # remsh sees b only: it is hidden, as is the observer
