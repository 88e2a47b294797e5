"""The observer's web server: aiohttp on the node's own event loop (no thread).

Routes:

- ``GET /``: the live page (`_page.PAGE`);
- ``GET /metrics``: Prometheus' text format (`_metrics`);
- ``GET /api/snapshot``: every node of the cluster, as JSON (`_snapshot.cluster_snapshot`);
- ``GET /events``: the same, pushed as Server-Sent Events every ``interval`` seconds
  (query parameter, default 1, at least 0.1);
- ``GET /api/process?node=N&id=I&creation=C``: `nb.process_info` of that process;
- ``POST /api/kill`` (JSON ``{"node", "id", "creation"}``): ``exit(pid, "kill")``, refused with
  403 unless the node option ``observer_control=True``.

It binds 127.0.0.1 unless ``observer_host`` says otherwise. Its handlers are not processes:
what needs one (calling supervisors, asking other nodes) runs in a short-lived process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from typing import Any

from aiohttp import web
from numbeam.actors._runtime import Runtime
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import _snapshot
from ._metrics import registry_for
from ._page import PAGE

__all__ = ["Observer", "start_observer"]

log = logging.getLogger("numbeam.observer")


class Observer:
    """A running observer server (``rt.observer``): its `url`, and `close`."""

    def __init__(self, rt: Runtime, seeds: list[str]) -> None:
        self.rt = rt
        self.seeds = seeds
        self.control = rt.options.observer_control
        self.registry = registry_for(rt)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.closing = asyncio.Event()

    async def close(self) -> None:
        """Stop serving: end the event streams, then close the server."""
        self.closing.set()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()

    # -- handlers ------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        snap = await _snapshot.in_process(_snapshot.cluster_snapshot, self.seeds)
        snap["control"] = self.control
        return snap  # type: ignore[no-any-return]

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def api_snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(await self.snapshot())

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            interval = max(0.1, float(request.query.get("interval", "1")))
        except ValueError:
            raise web.HTTPBadRequest(text="interval must be a number of seconds") from None
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        try:
            while not self.closing.is_set():
                data = json.dumps(await self.snapshot())
                await resp.write(f"event: snapshot\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), interval)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass  # the page went away, or the node stops
        return resp

    def _pid_args(self, data: Any) -> tuple[str, int, int]:
        try:
            node = str(data["node"])
            pid_id = int(data["id"])
            creation = int(data["creation"])
        except (KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(
                text="give node, id and creation (the pid's fields, as in the snapshot)"
            ) from None
        return node, pid_id, creation

    async def api_process(self, request: web.Request) -> web.Response:
        node, pid_id, creation = self._pid_args(request.query)
        try:
            info = await _snapshot.in_process(_snapshot.process_details, node, pid_id, creation)
        except (TimeoutError, RuntimeError) as e:
            raise web.HTTPBadGateway(text=f"node {node} did not answer: {e}") from None
        if info is None:
            raise web.HTTPNotFound(text="no such process (it has exited)")
        return web.json_response(info)

    async def api_kill(self, request: web.Request) -> web.Response:
        if not self.control:
            raise web.HTTPForbidden(
                text="actions are off: start the node with observer_control=True to allow them"
            )
        if request.content_type != "application/json":
            # (a form or text/plain POST from another site's page needs no CORS preflight;
            # a JSON one does, and this server answers none: so only same-origin pages act)
            raise web.HTTPUnsupportedMediaType(text="send the pid as application/json")
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="expected a JSON body") from None
        node, pid_id, creation = self._pid_args(data)
        try:
            done = await _snapshot.in_process(_snapshot.kill, node, pid_id, creation)
        except (TimeoutError, RuntimeError) as e:
            raise web.HTTPBadGateway(text=f"node {node} did not answer: {e}") from None
        log.warning("observer: kill %s.%s on %s (%s)", pid_id, creation, node, request.remote)
        return web.json_response({"killed": bool(done)})


async def start_observer(rt: Runtime, seeds: list[str] | None = None) -> Observer:
    """Serve the observer for `rt` on its ``observer`` port; the server's callbacks run in a
    context of their own, outside any process."""
    obs = Observer(rt, list(seeds or ()))
    task = asyncio.get_running_loop().create_task(_serve(obs), context=contextvars.Context())
    await task
    return obs


async def _serve(obs: Observer) -> None:
    opts = obs.rt.options
    app = web.Application()
    app.router.add_get("/", obs.page)
    app.router.add_get("/metrics", obs.metrics)
    app.router.add_get("/api/snapshot", obs.api_snapshot)
    app.router.add_get("/api/process", obs.api_process)
    app.router.add_get("/events", obs.events)
    app.router.add_post("/api/kill", obs.api_kill)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, opts.observer_host, opts.observer)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    obs.runner = runner
    host, port = runner.addresses[0][:2]
    shown = f"[{host}]" if ":" in host else host
    obs.url = f"http://{shown}:{port}/"
    log.info("node %s: observer at %s", obs.rt.node, obs.url)
