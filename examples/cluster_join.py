"""Cluster formation through a hosts file: three nodes find each other, then a fourth joins.

Each node is its own OS process, started as a deployment would start it, with the same
command: ``python -m numbeam node --name a@127.0.0.1:0 --join file:HOSTS``, with a throwaway
cookie in ``NUMBEAM_COOKIE``. No node is told of another: each re-reads the hosts file when
it changes (`nb.cluster.join`'s ``file:`` strategy) and connects to the names listed there
(and, connections being transitive, meets the nodes those know). Port 0 picks a free port,
so the hosts file starts empty and each node's name (with its real port, from its ready
line) is written to it once it is up: first the three, then, once they see each other, a
fourth node ``d``, whose line is appended later. ``d`` reads the three from the file; the
three learn of ``d`` from it in turn (or through ``d``'s connections, whichever comes first).

This program watches from a hidden node (``hidden=True``, Erlang's ``-hidden``: no node lists
it in `nb.nodes()`): it spawns `cluster_worker.await_nodes` on every node, which replies with
that node's `nb.nodes()` once it lists all the others, and prints what each node sees. Every
node process is stopped and the temporary folder removed at the end, whatever happens.

Run it:  python examples/cluster_join.py
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import cluster_worker

import numbeam as nb

HERE = Path(__file__).resolve().parent
TIMEOUT = 15.0  # bound on every wait; a healthy run takes about a second per step


def short(node: str) -> str:
    return node.partition("@")[0]


def start_node(
    name: str, hosts: Path, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``numbeam node --name name --join file:hosts``, able to import this folder's modules."""
    command = ["-m", "numbeam", "node", "--name", name, "--path", str(HERE)]
    return subprocess.Popen(
        [sys.executable, *command, "--join", f"file:{hosts}"],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )


def wait_ready(proc: subprocess.Popen[bytes], log: IO[bytes]) -> str:
    """Read the node's ``numbeam node NAME ready`` line (its only stdout); return NAME."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], TIMEOUT)[0]:
        raise TimeoutError(f"a node printed no ready line within {TIMEOUT} s")
    words = proc.stdout.readline().decode().split()
    if words[:2] == ["numbeam", "node"] and words[3:] == ["ready"]:
        return words[2]
    log.seek(0)
    raise RuntimeError(
        f"a node exited with status {proc.wait(TIMEOUT)} before it was ready:\n"
        + log.read().decode(errors="replace")
    )


def stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to all (a node stops cleanly), SIGKILL to any still there after TIMEOUT; reap."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def everyone_sees_everyone(names: list[str]) -> None:
    """Ask each node for its `nb.nodes()` once it lists all the others; print what it sees."""
    me = nb.self()
    for name in names:
        others = [n for n in names if n != name]
        nb.spawn(cluster_worker.await_nodes, me, others, TIMEOUT, node=name)
    seen: dict[str, list[str]] = {}
    while len(seen) < len(names):
        match await nb.receive(timeout=TIMEOUT + 5.0):
            case ("nodes", node, listed) if node in names:
                seen[node] = listed
            case other:
                raise RuntimeError(f"unexpected message {other!r}")
    for name in names:
        print(f"  {name} sees {', '.join(seen[name]) or 'nobody'}")
    for name in names:
        if sorted(seen[name]) != sorted(n for n in names if n != name):
            raise RuntimeError(f"{name} lists {seen[name]}, not all the other nodes")


async def main(
    names: list[str],
    hosts: Path,
    env: dict[str, str],
    log: IO[bytes],
    procs: list[subprocess.Popen[bytes]],
    written: float,
) -> None:
    await everyone_sees_everyone(names)
    print(
        f"{len(names)} nodes found each other through the hosts file "
        f"{time.monotonic() - written:.1f} s after it was written; nobody connected them by hand"
    )

    # A fourth node, started later with the same command; its line is appended to the file.
    procs.append(start_node("d@127.0.0.1:0", hosts, env, log))
    d = await asyncio.to_thread(wait_ready, procs[-1], log)
    ready = time.monotonic()
    with hosts.open("a") as f:
        f.write(d + "\n")
    print(f"started {d} (OS pid {procs[-1].pid}) the same way, and appended it to the hosts file")
    names = [*names, d]
    await everyone_sees_everyone(names)
    took = time.monotonic() - ready
    print(
        f"{short(d)} joined: seen by all {len(names) - 1} other nodes {took:.1f} s after it was up"
    )
    print(f"the watcher {nb.node()} is hidden: listed by none of them")


def run() -> None:
    env = {**os.environ, "NUMBEAM_COOKIE": secrets.token_urlsafe(32)}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="numbeam-join-") as tmp, ExitStack() as files:
        folder = Path(tmp)
        hosts = folder / "hosts"
        hosts.write_text("# numbeam nodes, one name per line\n")
        print(f"hosts file {hosts}")
        # The nodes' logs (stderr) go to files, shown if one fails to start.
        logs = [files.enter_context(open(folder / f"{n}.log", "w+b")) for n in "abcd"]
        try:
            for n, log in zip("abc", logs, strict=False):
                procs.append(start_node(f"{n}@127.0.0.1:0", hosts, env, log))
            names = [wait_ready(p, log) for p, log in zip(procs, logs, strict=False)]
            pids = ", ".join(
                f"{short(n)} (OS pid {p.pid})" for n, p in zip(names, procs, strict=True)
            )
            print(f"started {pids}, each with --join file:{hosts}")
            # Written whole and renamed over the old file: a node never reads half of it.
            new = folder / "hosts.new"
            new.write_text(hosts.read_text() + "".join(f"{n}\n" for n in names))
            new.replace(hosts)
            written = time.monotonic()
            print(f"wrote {', '.join(names)} to the hosts file")
            nb.run(
                main,
                names,
                hosts,
                env,
                logs[3],
                procs,
                written,
                node="watch@127.0.0.1:0",
                hidden=True,
                cookie=env["NUMBEAM_COOKIE"],
            )
        finally:
            stop_nodes(procs)
            print(f"stopped {len(procs)} nodes")
    print(f"removed {folder}")


if __name__ == "__main__":
    run()
