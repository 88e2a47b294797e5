"""What telemetry costs: ping-pong and spawn/exit with nothing attached, with a handler attached
and then detached, and with one handler attached to process spawn and exit.

All sides run in the same `nb.run` (uvloop when installed), interleaved (plain, detached,
attached, repeat) with the best run of each kept, so load on the machine hurts them alike.
"Plain" has no handler attached; "detached" runs right after one was attached and
detached again (the emitters' table is empty again: the ratio should be 1); "attached"
counts every spawn and exit in a handler (ping-pong spawns nothing, so it should stay at 1
too; spawn/exit pays for building the event and calling the handler). Ratios are rates over
plain's rate. The order of the sides turns from one round to the next.

    python bench/telemetry.py            # full sizes (~15 s on 2 cores)
    python bench/telemetry.py --quick    # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import _report
from _report import rate

import numbeam as nb

EVENTS = [("numbeam", "process", "spawn"), ("numbeam", "process", "exit")]


async def _pong(peer: nb.Pid) -> None:
    receive, send = nb.receive, nb.send
    while True:
        msg = await receive()
        if msg is None:
            return
        send(peer, msg)


async def pingpong(n: int) -> float:
    receive, send = nb.receive, nb.send
    pong = nb.spawn(_pong, nb.self())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    for i in range(n):
        send(pong, i)
        await receive()
    elapsed = time.perf_counter() - t0
    send(pong, None)
    return elapsed


async def _short(left: list[Any]) -> None:
    left[0] -= 1
    if left[0] == 0:
        left[1].set_result(None)


async def spawn_exit(n: int) -> float:
    """Spawn `n` processes that return at once; until the last has run."""
    left: list[Any] = [n, asyncio.get_running_loop().create_future()]
    t0 = time.perf_counter()
    for _ in range(n):
        nb.spawn(_short, left)
    await left[1]
    await asyncio.sleep(0)  # the last one's exit (its task's done callback)
    return time.perf_counter() - t0


async def main(n_pp: int, n_spawn: int, repeats: int) -> list[list[str]]:
    counted = [0]

    def handler(event: Any, measurements: Any, metadata: Any) -> None:
        counted[0] += 1

    best: dict[tuple[str, str], float] = {}
    sides = ["plain", "detached", "attached"]
    for round_ in range(repeats):
        for side in sides[round_ % 3 :] + sides[: round_ % 3]:
            if side != "plain":
                nb.telemetry.attach_many("bench", EVENTS, handler)
            if side == "detached":
                nb.telemetry.detach("bench")
            for work, fn, n in (("ping-pong", pingpong, n_pp), ("spawn/exit", spawn_exit, n_spawn)):
                t = await fn(n)
                key = (work, side)
                best[key] = min(best.get(key, float("inf")), t)
            if side == "attached":
                nb.telemetry.detach("bench")
    assert counted[0] > 0, "the handler was never called"
    rows = []
    for work, n in (("ping-pong", n_pp), ("spawn/exit", n_spawn)):
        plain = n / best[(work, "plain")]
        for side in ("detached", "attached"):
            r = n / best[(work, side)]
            rows.append(
                [
                    f"{work} ({n // 1000}k), telemetry {side}",
                    rate(plain),
                    rate(r),
                    f"{r / plain:.2f}x",
                    "info",
                ]
            )
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one run each")
    args = p.parse_args()
    n_pp, n_spawn, repeats = (10_000, 5_000, 1) if args.quick else (100_000, 50_000, 6)
    t0 = time.perf_counter()
    rows = nb.run(main, n_pp, n_spawn, repeats)
    print(f"mode: {'quick' if args.quick else 'full'}, best of {repeats} run(s) per side\n")
    _report.print_table(["benchmark", "plain", "this side", "ratio", "result"], rows)
    print(f"\n({time.perf_counter() - t0:.1f} s)")
