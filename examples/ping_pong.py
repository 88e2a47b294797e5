"""Ping-pong: the actor model in one minute.

Two processes share nothing; they talk only by messages. `pong` answers each ping, `main`
counts the round trips, then shows a selective receive (take the message you want, leave the
others queued, in order) and a monitor (be told, as a message, when a process ends).

Run it:  python examples/ping_pong.py
"""

from __future__ import annotations

import numbeam as nb


async def pong() -> None:
    """Answer ("ping", n, sender) with ("pong", n) until told to stop."""
    while True:
        msg = await nb.receive()
        match msg:
            case ("ping", n, sender):
                nb.send(sender, ("pong", n))
            case "stop":
                print(f"pong {nb.self()}: stopping")
                return


async def main() -> None:
    me = nb.self()
    print(f"main is process {me}")

    # 1. spawn a process and register it by name, then talk to it.
    pong_pid = nb.spawn(pong, name="pong")
    print(f"spawned pong as {pong_pid}; nb.whereis('pong') -> {nb.whereis('pong')}")
    for n in range(1, 4):
        nb.send("pong", ("ping", n, me))  # a registered name works like a pid
        reply = await nb.receive(timeout=1.0)
        print(f"main: sent ping {n}, got {reply}")

    # 2. selective receive: the mailbox keeps messages in order, receive picks what matches.
    nb.send(me, ("log", "first"))
    nb.send(me, ("log", "second"))
    nb.send(me, ("urgent", "handle me first"))
    urgent = await nb.receive(lambda m: m[0] == "urgent", timeout=1.0)
    print(f"main: selective receive took {urgent} ahead of the older messages")
    rest = [await nb.receive(timeout=1.0), await nb.receive(timeout=1.0)]
    print(f"main: then, in the order they were sent: {rest}")

    # 3. a monitor: when pong ends, main gets a Down message with the reason.
    ref = nb.monitor(pong_pid)
    nb.send(pong_pid, "stop")
    down = await nb.receive(nb.Down, timeout=1.0)
    assert down.ref == ref
    print(f"main: pong {down.pid} is down, reason {down.reason!r}")

    # 4. a receive with a timeout: nothing else will come.
    try:
        await nb.receive(timeout=0.05)
    except TimeoutError:
        print("main: mailbox empty after 50 ms, done")


if __name__ == "__main__":
    nb.run(main)
