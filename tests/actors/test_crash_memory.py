"""A crashed process's data dies with it: its exception, kept as the exit reason (in Down and
Exit messages, crash reports), no longer holds the frames of its traceback, so reference
counting frees what the process held in locals at once, without the cyclic collector."""

from __future__ import annotations

import gc
import logging
import traceback
import weakref

import numpy as np

import numbeam as nb

T = 10.0
BIG = 200 * 1024 * 1024  # a 200 MB tensor: the size


class Held:
    """A local we can watch with a weak reference."""


async def crash_holding(report_to: nb.Pid) -> None:
    big = nb.tensor(np.zeros(BIG, dtype=np.uint8))
    marker = Held()
    nb.send(report_to, ("holding", big.nbytes, weakref.ref(marker)))
    await nb.receive(lambda m: m == "crash", timeout=T)
    raise RuntimeError(f"boom with {big.nbytes} bytes")


async def test_a_crashed_process_frees_its_tensor_without_the_garbage_collector(caplog):
    caplog.set_level(logging.ERROR, logger="numbeam")
    gc.disable()
    try:
        async with nb.Runtime():
            before = nb.tensors.stats()["bytes"]
            pid, ref = nb.spawn_monitor(crash_holding, nb.self())
            _, nbytes, marker = await nb.receive(lambda m: m[0] == "holding", timeout=T)
            assert nbytes == BIG
            assert nb.tensors.stats()["bytes"] >= before + BIG
            nb.send(pid, "crash")
            down = await nb.receive(nb.Down, timeout=T)
            assert (down.ref, down.pid) == (ref, pid)
            # The reason is the exception itself, with its traceback (still formattable)...
            assert isinstance(down.reason, RuntimeError)
            text = "".join(traceback.format_exception(down.reason))
            assert "crash_holding" in text and "boom" in text
            # ...but its frames hold nothing: the tensor and the marker are gone already.
            assert marker() is None
            assert nb.tensors.stats()["bytes"] <= before
    finally:
        gc.enable()
    # The crash report was logged with its full traceback first.
    (record,) = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert record.exc_info is not None
    assert "crash_holding" in "".join(traceback.format_exception(*record.exc_info))
