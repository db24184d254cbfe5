"""The HTTP/JSON service: ``GET /health``, ``POST /run``, ``POST /judge``.

Concurrency: at most ``max_concurrency`` programs run at once; up to ``max_queue`` requests wait
for a slot; beyond that a request gets ``503`` at once (the client retries), never a crash.
Per-request limits are clamped to the service's maxima. Bad input gets ``400`` with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from sandbox.judge import judge
from sandbox.languages import LANGUAGES
from sandbox.runner import Limits, run_program

log = logging.getLogger("sandbox")


class BadRequest(ValueError):
    pass


class Service:
    def __init__(self, max_concurrency: int = 2, max_queue: int = 256, isolated: bool = True,
                 max_timeout_s: float = 60.0, max_memory_mb: int = 4096):
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.isolated = isolated
        self.max_timeout_s, self.max_memory_mb = max_timeout_s, max_memory_mb
        self.running = self.waiting = 0

    def limits(self, body: dict) -> Limits:
        try:
            timeout_s = float(body.get("timeout_s", 10.0))
            memory_mb = int(body.get("memory_mb", 512))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"timeout_s and memory_mb must be numbers: {exc}") from None
        if timeout_s <= 0 or memory_mb <= 0:
            raise BadRequest("timeout_s and memory_mb must be positive")
        return Limits(timeout_s=min(timeout_s, self.max_timeout_s), memory_mb=min(memory_mb, self.max_memory_mb))

    async def admitted(self, work):
        if self.waiting >= self.max_queue:
            raise web.HTTPServiceUnavailable(text='{"error": "sandbox queue is full, retry later"}',
                                             content_type="application/json")
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            return await work()
        finally:
            self.running -= 1
            self.slots.release()


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except Exception:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    language = body.get("language", "python")
    if language not in LANGUAGES:
        raise BadRequest(f"unknown language {language!r}; known: {sorted(LANGUAGES)}")
    if not isinstance(body.get("code"), str):
        raise BadRequest("'code' (a string) is required")
    return body


def make_app(service: Service) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/health")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "isolation": "bwrap" if service.isolated else "weak",
                                  "running": service.running, "waiting": service.waiting,
                                  "max_concurrency": service.max_concurrency, "languages": sorted(LANGUAGES)})

    @routes.post("/run")
    async def run(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            limits = service.limits(body)
            stdin = str(body.get("stdin", ""))
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        result = await service.admitted(
            lambda: run_program(body.get("language", "python"), body["code"], stdin, limits, service.isolated))
        return web.json_response(result.to_dict())

    @routes.post("/judge")
    async def judge_route(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            limits = service.limits(body)
            tests = body.get("tests")
            if not isinstance(tests, dict) or not isinstance(tests.get("inputs"), list):
                raise BadRequest("'tests' must be {inputs: [...], outputs: [...], fn_name?}")
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

        async def work():
            return await judge(body.get("language", "python"), body["code"], tests, limits,
                               bool(body.get("early_stop", True)), float(body.get("float_tolerance", 0.0)),
                               service.isolated)
        try:
            result = await service.admitted(work)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.add_routes(routes)
    return app
