"""nb.Agent: a process holding one value, read and changed by functions (Elixir's Agent).

The functions run inside the agent, one at a time, in the order they were sent, so a `get`
after a `cast` from the same caller sees the cast's change. A function that raises crashes
the agent like any GenServer callback, and the waiting caller gets `nb.CallError`.
"""

from __future__ import annotations

import pytest
from actor_helpers import WAIT

import numbeam as nb


async def test_get_returns_a_function_of_the_initial_state(nb_runtime: nb.Runtime) -> None:
    agent = await nb.Agent.start_link(lambda: [1, 2, 3])
    assert await nb.Agent.get(agent, len, timeout=WAIT) == 3


async def test_update_replaces_the_state(nb_runtime: nb.Runtime) -> None:
    agent = await nb.Agent.start_link(lambda: 1)
    assert await nb.Agent.update(agent, lambda n: n + 41, timeout=WAIT) is None
    assert await nb.Agent.get(agent, lambda n: n, timeout=WAIT) == 42


async def test_get_and_update_returns_the_reply_and_stores_the_new_state(
    nb_runtime: nb.Runtime,
) -> None:
    agent = await nb.Agent.start_link(lambda: 10)
    assert await nb.Agent.get_and_update(agent, lambda n: (n, n * 2), timeout=WAIT) == 10
    assert await nb.Agent.get(agent, lambda n: n, timeout=WAIT) == 20


async def test_cast_updates_without_waiting(nb_runtime: nb.Runtime) -> None:
    agent = await nb.Agent.start_link(lambda: 0)
    for _ in range(5):
        nb.Agent.cast(agent, lambda n: n + 1)
    assert await nb.Agent.get(agent, lambda n: n, timeout=WAIT) == 5


async def test_stop_ends_the_agent(nb_runtime: nb.Runtime) -> None:
    agent = await nb.Agent.start_link(lambda: 0)
    ref = nb.monitor(agent)
    await nb.Agent.stop(agent, timeout=WAIT)
    down = await nb.testing.assert_receive(nb.Down, timeout=WAIT)
    assert (down.ref, down.reason) == (ref, "normal")
    assert not nb.is_alive(agent)


async def test_async_functions_are_accepted() -> None:
    async def initial() -> dict[str, int]:
        return {"hits": 0}

    async def hit(state: dict[str, int]) -> dict[str, int]:
        return {"hits": state["hits"] + 1}

    async def hits(state: dict[str, int]) -> int:
        return state["hits"]

    async with nb.Runtime():
        agent = await nb.Agent.start_link(initial)
        await nb.Agent.update(agent, hit, timeout=WAIT)
        nb.Agent.cast(agent, hit)
        assert await nb.Agent.get(agent, hits, timeout=WAIT) == 2


async def test_a_named_agent_is_reached_by_name(nb_runtime: nb.Runtime) -> None:
    agent = await nb.Agent.start_link(lambda: "config", name="settings")
    assert nb.whereis("settings") == agent
    await nb.Agent.update("settings", str.upper, timeout=WAIT)
    assert await nb.Agent.get("settings", lambda s: s, timeout=WAIT) == "CONFIG"
    await nb.Agent.stop("settings", timeout=WAIT)
    assert nb.whereis("settings") is None


async def test_a_raising_function_crashes_the_agent_and_the_caller_gets_call_error(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        agent = await nb.Agent.start(lambda: 0)
        with pytest.raises(nb.CallError) as info:
            await nb.Agent.get(agent, lambda n: 1 / n, timeout=WAIT)
        assert isinstance(info.value.reason, ZeroDivisionError)
        assert not nb.is_alive(agent)


async def test_start_with_a_non_callable_raises_start_error(
    crash_log: pytest.LogCaptureFixture,
) -> None:
    async with nb.Runtime():
        with pytest.raises(nb.StartError) as info:
            await nb.Agent.start_link(0)  # type: ignore[arg-type]
        assert isinstance(info.value.reason, TypeError)
