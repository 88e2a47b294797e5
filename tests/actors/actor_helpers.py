"""Small process bodies and waits shared by the tests in tests/actors.

Imported as ``from actor_helpers import ...``: pytest's default "prepend" import mode puts
this folder on ``sys.path``. The name does not start with ``test_``, so pytest does not
collect it. Each helper here is used, unchanged, by more than one test module.
"""

from __future__ import annotations

import numbeam as nb

WAIT = 2.0  # the longest any single wait in these tests may take


async def down_of(ref: nb.Ref) -> nb.Down:
    msg = await nb.receive(lambda m: isinstance(m, nb.Down) and m.ref == ref, timeout=WAIT)
    assert isinstance(msg, nb.Down)
    return msg


async def wait_forever() -> None:
    await nb.receive()


async def exit_on_message() -> None:
    await nb.receive()


async def exit_at_once() -> None:
    return None


async def dead_pid() -> nb.Pid:
    pid, _ = nb.spawn_monitor(exit_at_once)
    await nb.receive(nb.Down, timeout=2)
    return pid


async def stop_with(reason: object) -> None:
    raise nb.Stop(reason)


async def crash_on_message(exc: BaseException) -> None:
    await nb.receive()
    raise exc


async def echo() -> None:
    while True:
        sender, msg = await nb.receive()
        nb.send(sender, msg)


async def add(a: int, b: int) -> int:
    return a + b
