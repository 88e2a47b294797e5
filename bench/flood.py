"""A node flooded by peers without the cookie: what it holds, what it logs, how it answers.

    python bench/flood.py                 # 4 connections flooding 1 MB frames for 15 s
    python bench/flood.py --seconds 3     # shorter (the test runs this)
    python bench/flood.py --junk 100000   # then 100k one-byte junk frames on one connection

Node B is a `numbeam node` process (its stderr, its log, goes to a file that is measured).
This process is node A, with the cookie: during the flood it makes round trips to an echo
process on B and times them. The flooders are threads with raw TCP sockets: half speak ZMTP
3.0 (greeting, NULL mechanism, READY) and then send 1 MB message frames, half send raw bytes
(libzmq reads those as ZMTP 1.0). Each reconnects when B drops it. With `--junk`, a peer that
passes ZeroMQ's handshake (it has cookie-derived credentials: the worst case, a cookie holder
that never does the node handshake) sends N one-byte frames, then a node `hello` on the same
connection, whose `challenge` shows that all of them were read.

Figures: B's RSS before the flood and its peak (VmHWM), the bytes B logged, the round trips
made and their median and worst latency. Printed as ``key value`` lines, one per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from numbeam.transport._cookie import new_nonce
from numbeam.transport._gate import credentials
from numbeam.transport._ops import MAGIC

import numbeam as nb

HERE = Path(__file__).resolve().parent
COOKIE = "numbeam-flood-cookie"
FRAME = 1 << 20


async def echo() -> None:
    """Answer ``(from, x)`` with ``x`` until killed."""
    while True:
        sender, x = await nb.receive()
        nb.send(sender, x)


def _rss(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(key)


def _flooder(host: str, port: int, zmtp: bool, until: float, sent: list[int]) -> None:
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
    greeting += b"\0" + b"\0" * 31
    ready = (
        b"\x04" + bytes([6 + 5 + 4 + 6]) + b"\x05READY" + b"\x0bSocket-Type" + b"\0\0\0\x06DEALER"
    )
    header = b"\x02" + struct.pack(">Q", FRAME)  # a long message frame
    payload = os.urandom(FRAME)
    while time.monotonic() < until:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if zmtp:
                    s.sendall(greeting + ready)
                while time.monotonic() < until:
                    s.sendall(header + payload if zmtp else payload)
                    sent[0] += FRAME
        except OSError:
            continue


async def _round_trips(b: str, until: float) -> list[float]:
    pid = nb.spawn("flood:echo", node=b)
    me = nb.self()
    times = []
    i = 0
    while time.monotonic() < until:
        t0 = time.perf_counter()
        nb.send(pid, (me, i))
        await nb.receive(lambda m, i=i: m == i, timeout=30.0)
        times.append(time.perf_counter() - t0)
        i += 1
        await asyncio.sleep(0.01)  # (pacing: about 100 calls a second, not synchronisation)
    return times


def _junk(b: str, n: int) -> None:
    """`n` one-byte frames from a connection that never authenticates, then a hello whose
    challenge shows that the node has read them all."""
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.SNDHWM, 0)
    d.plain_username, d.plain_password = credentials(COOKIE.encode(), b)
    d.connect("tcp://" + b.partition("@")[2])
    for _ in range(n):
        d.send(b"x")
    d.send_multipart([MAGIC, msgpack.packb([b"hello", "junk@127.0.0.1:1", 1, new_nonce(), 99])])
    if not d.poll(60_000):
        raise RuntimeError("the node did not answer after the junk")
    d.recv_multipart()
    d.close(0)
    ctx.term()


async def _main(b: str, b_pid: int, args: argparse.Namespace, figures: dict[str, Any]) -> None:
    assert await nb.connect(b)
    await _round_trips(b, time.monotonic() + 0.5)  # warm up: connected both ways, imported
    figures["rss_before_bytes"] = _rss(b_pid, "VmRSS")
    host, port = b.partition("@")[2].rsplit(":", 1)
    until = time.monotonic() + args.seconds
    sent = [0]
    threads = [
        threading.Thread(target=_flooder, args=(host, int(port), i % 2 == 0, until, sent))
        for i in range(args.connections)
    ]
    for t in threads:
        t.start()
    times = await _round_trips(b, until)
    for t in threads:
        await asyncio.to_thread(t.join)
    figures["flood_written_bytes"] = sent[0]  # (what the flooders wrote; B drops them)
    figures["rss_peak_bytes"] = _rss(b_pid, "VmHWM")
    figures["rss_growth_bytes"] = figures["rss_peak_bytes"] - figures["rss_before_bytes"]
    figures["round_trips"] = len(times)
    figures["rtt_median_ms"] = round(statistics.median(times) * 1000, 2)
    figures["rtt_max_ms"] = round(max(times) * 1000, 2)
    if args.junk:
        await asyncio.to_thread(_junk, b, args.junk)
        figures["junk_frames"] = args.junk


def run(seconds: float, connections: int = 4, junk: int = 0) -> dict[str, Any]:
    """Start node B, flood it, and return the figures."""
    args = argparse.Namespace(seconds=seconds, connections=connections, junk=junk)
    env = dict(os.environ, NUMBEAM_COOKIE=COOKIE, PYTHONUNBUFFERED="1")
    env.pop("NUMBEAM_COOKIE_FILE", None)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "b.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "numbeam",
                    "node",
                    "--name",
                    "b@127.0.0.1:0",
                    "--path",
                    str(HERE),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**env, "HOME": tmp},
            )
        try:
            assert proc.stdout is not None
            words = proc.stdout.readline().decode().split()
            if len(words) != 4 or words[3] != "ready":
                raise RuntimeError(f"node B did not start: {words}")
            b = words[2]
            log_start = log_path.stat().st_size
            nb.run(_main, b, proc.pid, args, figures, node="a@127.0.0.1:0", cookie=COOKIE)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        figures["log_bytes"] = log_path.stat().st_size - log_start
        figures["log_lines"] = log_path.read_bytes()[log_start:].count(b"\n")
        figures["log_tail"] = log_path.read_bytes()[log_start:][-600:].decode(errors="replace")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="how long the flood lasts")
    p.add_argument("--connections", type=int, default=4, help="flooding connections")
    p.add_argument("--junk", type=int, default=0, help="then this many one-byte junk frames")
    a = p.parse_args()
    figures = run(a.seconds, a.connections, a.junk)
    tail = figures.pop("log_tail")
    for key, value in figures.items():
        print(key, value)
    print("--- the end of node B's log ---")
    print(tail)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
