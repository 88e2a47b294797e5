"""The serving's decisions without a runtime: when a batch leaves, what it holds, which inputs
stack together, which instance a request goes to; and stacking and splitting rows."""

from __future__ import annotations

import random

import numpy as np
import pytest
from numbeam.serving._arrays import describe, signature, split, stack
from numbeam.serving._policy import Batcher, Request, choose_instance, split_by_signature

import numbeam as nb


def add(b: Batcher, n: int, at: float, sig: object = "s") -> Request:
    req = Request(key=None, n=n, arrived=at)
    b.add(req, list(range(n)), [sig] * n)
    return req


def test_a_full_batch_leaves_at_once_and_holds_at_most_batch_size() -> None:
    b = Batcher(batch_size=4, batch_timeout=1.0, max_queue=100)
    add(b, 3, at=0.0)
    assert not b.ready(0.0)
    add(b, 3, at=0.1)
    assert b.ready(0.1)
    assert [i.value for i in b.take()] == [0, 1, 2, 0]
    assert b.waiting == 2 and not b.ready(0.2)


def test_a_lone_input_leaves_batch_timeout_after_it_arrived() -> None:
    b = Batcher(batch_size=4, batch_timeout=0.5, max_queue=100)
    assert b.deadline() is None
    add(b, 1, at=2.0)
    assert b.deadline() == 2.5
    assert not b.ready(2.49) and b.ready(2.5)
    assert len(b.take()) == 1 and b.deadline() is None


def test_withdrawn_inputs_are_skipped_and_free_the_queue() -> None:
    b = Batcher(batch_size=8, batch_timeout=1.0, max_queue=4)
    first = add(b, 2, at=0.0)
    add(b, 2, at=0.5)
    assert not b.admits(1)
    b.withdraw(first)
    assert first.done and b.waiting == 2 and b.admits(2) and not b.admits(3)
    assert b.deadline() == 1.5  # the oldest live input's
    assert [i.request is first for i in b.take()] == [False, False]


def test_max_queue_counts_inputs() -> None:
    b = Batcher(batch_size=2, batch_timeout=1.0, max_queue=3)
    assert b.admits(3) and not b.admits(4)
    add(b, 3, at=0.0)
    assert not b.admits(1)
    b.take()
    assert b.admits(2)


def test_a_batch_takes_the_last_signature_else_the_most_common() -> None:
    b = Batcher(batch_size=8, batch_timeout=1.0, max_queue=100)
    for sig in ["a", "b", "b", "a", "b"]:
        add(b, 1, at=0.0, sig=sig)
    items = b.take()
    sig, fitting, misfits = split_by_signature(items, preferred=None)
    assert sig == "b" and len(fitting) == 3 and len(misfits) == 2
    sig, fitting, misfits = split_by_signature(items, preferred="a")
    assert sig == "a" and len(fitting) == 2
    assert split_by_signature(items, preferred="c")[0] == "b"


def test_choose_instance_prefers_local_then_the_least_loaded() -> None:
    rng = random.Random(1)
    assert choose_instance(["l"], ["l", "x", "y"], {"l": 99}, set(), rng) == "l"
    assert choose_instance([], ["x", "y", "z"], {"x": 3, "y": 1, "z": 2}, set(), rng) == "y"
    assert choose_instance(["l"], ["l", "x", "y"], {"x": 3, "y": 1}, {"l", "y"}, rng) == "x"
    assert choose_instance([], ["x"], {}, {"x"}, rng) is None
    picks = {choose_instance([], ["x", "y"], {}, set(), rng) for _ in range(50)}
    assert picks == {"x", "y"}  # equals are picked at random


def test_signatures_stack_and_split_tuples_and_dicts() -> None:
    xs = [(np.full(3, i, np.float32), {"k": np.int64(i)}) for i in range(4)]
    sigs = [signature(x) for x in xs]
    assert len({s for s, _ in sigs}) == 1
    sig = sigs[0][0]
    assert describe(sig) == "(array float32[3], {'k': array int64[]})"
    a, d = stack([v for _, v in sigs], sig)
    assert a.shape == (4, 3) and d["k"].tolist() == [0, 1, 2, 3]
    rows = split((a * 2, {"k": d["k"] + 1}), 4)
    assert [float(r[0][0]) for r in rows] == [0, 2, 4, 6]
    assert [int(r[1]["k"]) for r in rows] == [1, 2, 3, 4]


async def test_tensor_inputs_stack_into_a_tensor() -> None:
    async with nb.Runtime():
        ts = [nb.tensor(np.full(2, i, np.float32)) for i in range(3)]
        sig, _ = signature(ts[0])
        batch = stack(ts, sig)
        assert isinstance(batch, nb.Tensor) and batch.shape == (3, 2)
        assert [r.tolist() for r in split(batch, 3)] == [[0, 0], [1, 1], [2, 2]]


def test_bad_inputs_and_outputs_are_named() -> None:
    with pytest.raises(TypeError, match="input is a str"):
        signature("text", "input")
    with pytest.raises(TypeError, match=r"np\.asarray"):
        signature([1, 2])
    with pytest.raises(ValueError, match=r"shape \(3,\) for a batch of 4"):
        split(np.zeros(3), 4)
    with pytest.raises(TypeError, match="predict returned a str"):
        split("nope", 4)
