"""The observer page in a real headless browser (Debian's chromium, driven through its DevTools
protocol over aiohttp's WebSocket client; `.ci/run` installs chromium when missing): it loads,
lists the processes of the running node, shows its supervision tree, and updates live after a
process is spawned and after the supervisor restarts a child. A screenshot is taken."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import numbeam as nb

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T = 30.0  # a bound on each wait; chromium starts in a second or two

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class Page:
    """One browser tab, spoken to with the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        await self.ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), T)
            if msg.get("id") == n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]  # type: ignore[no-any-return]

    async def wait_for(self, condition: str) -> Any:
        """Wait (in the page, bounded) until the JS expression `condition` is truthy."""
        script = (
            "new Promise((ok, fail) => { const t0 = Date.now(); (function poll() {"
            f" let v; try {{ v = ({condition}); }} catch (e) {{ v = null; }}"
            f" if (v) ok(v); else if (Date.now() - t0 > {int(T * 1000)}) fail('timed out');"
            " else setTimeout(poll, 50); })(); })"
        )
        for _ in range(20):
            try:
                r = await self.send(
                    "Runtime.evaluate", expression=script, awaitPromise=True, returnByValue=True
                )
                break
            except RuntimeError as e:  # the page was still loading: ask the loaded one
                if "context was destroyed" not in str(e):
                    raise
        assert "exceptionDetails" not in r, f"never true: {condition}"
        return r["result"].get("value")


@contextlib.asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A headless chromium with its own profile; killed, with all its children, at the end."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'profile'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so its children go with it
    )
    try:
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), T)).decode()
            assert line, "chromium exited before it listened"
            m = re.search(r"DevTools listening on ws://([\d.]+:\d+)/", line)
            if m:
                break
        drain = asyncio.ensure_future(proc.stderr.read())  # keep its pipe from filling
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=T)) as http:
            yield http, f"http://{m.group(1)}"
        drain.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def open_page(http: aiohttp.ClientSession, devtools: str, url: str) -> Page:
    async with http.put(f"{devtools}/json/new?{url}") as r:
        target = json.loads(await r.text())
    ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
    return Page(ws)


class Crashy(nb.GenServer):
    async def handle_cast(self, request: Any) -> None:
        raise RuntimeError("crash on purpose")


async def forever() -> None:
    await nb.receive(lambda m: False)


async def test_the_page_in_a_browser_lists_processes_trees_and_updates(
    tmp_path: Path, crash_log: Any
) -> None:
    async with nb.Runtime(observer=0), browser(tmp_path) as (http, devtools):
        sup = await nb.Supervisor.start_link([nb.Child(Crashy, id="crashy")], name="web_sup")
        url = nb.observer.url()
        page = await open_page(http, devtools, f"{url}?interval=0.2")
        tree = f"document.querySelector('details.tree[data-pid=\"{sup!r}\"]')"
        await page.wait_for("document.querySelector('table.processes tbody tr.proc')")
        await page.wait_for(f"document.body.innerText.includes('web_sup') && {tree}")
        assert "crashy" in await page.wait_for(f"{tree}.innerText")

        nb.spawn(forever, name="spawned_later")
        await page.wait_for("document.body.innerText.includes('spawned_later')")

        [(_, child, _)] = await nb.Supervisor.which_children(sup)
        nb.cast(child, "crash")
        await page.wait_for(f"{tree}.querySelector('.restarts').textContent === '1'")

        await page.wait_for("(document.querySelector('th[data-key=\"name\"]').click(), true)")
        names = await page.wait_for(
            "[...document.querySelectorAll('table.processes tbody tr')]"
            ".map(r => r.children[1].textContent)"
        )
        assert "spawned_later" in names and names == sorted(names)  # sorted by name now

        await page.wait_for("document.querySelector('tr.proc').click() || true")
        details = await page.wait_for(
            "document.getElementById('detail-body').textContent.includes('message_queue_len')"
            " && document.getElementById('detail-body').textContent"
        )
        assert '"messages_in"' in details
        assert "kill" not in await page.wait_for(
            "document.getElementById('detail-actions').outerHTML"
        )  # no actions without observer_control

        shot = await page.send("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        (tmp_path / "observer.png").write_bytes(png)
        await page.ws.close()
