"""The HTTP/JSON service: ``GET /health``, ``POST /run``, ``POST /judge``.

Concurrency: at most ``max_concurrency`` programs run at once; up to ``max_queue`` requests wait
for a slot; beyond that a request gets ``503`` at once (the client retries), never a crash.
Per-request limits are clamped to the service's maxima. Bad input gets ``400`` with the reason.
A judgement ends after ``max_judge_s`` whatever its test count (``deadline_exceeded``), and a
request whose client disconnects is cancelled, its running program killed (``python -m sandbox``
runs aiohttp with ``handler_cancellation``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal

from aiohttp import web

from sandbox.judge import judge
from sandbox.languages import LANGUAGES
from sandbox.runner import Limits, isolation, run_program

log = logging.getLogger("sandbox")


class BadRequest(ValueError):
    pass


class Service:
    def __init__(self, max_concurrency: int = 2, max_queue: int = 256, isolated: bool = True,
                 max_timeout_s: float = 60.0, max_memory_mb: int = 4096, max_body_mb: float = 8.0,
                 max_judge_s: float = 600.0):
        self.slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.isolated = isolated
        self.max_timeout_s, self.max_memory_mb, self.max_body_mb = max_timeout_s, max_memory_mb, max_body_mb
        self.max_judge_s = max_judge_s  # one judgement's whole time, all its tests together
        self.running = self.waiting = 0

    def limits(self, body: dict) -> Limits:
        timeout_s, memory_mb = body.get("timeout_s", 10.0), body.get("memory_mb", 512)
        for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb)):
            if not _finite_number(value) or value <= 0:
                raise BadRequest(f"{name} must be a positive finite number, got {value!r}")
        return Limits(timeout_s=min(float(timeout_s), self.max_timeout_s),
                      memory_mb=min(int(memory_mb), self.max_memory_mb))

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


def _finite_number(value) -> bool:
    """A JSON number that is not NaN or infinite (JSON booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except web.HTTPException:
        raise  # 413 past --max-body-mb
    except Exception:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    language = body.get("language", "python")
    if not isinstance(language, str) or language not in LANGUAGES:
        raise BadRequest(f"unknown language {language!r}; known: {sorted(LANGUAGES)}")
    _text(body, "code", required=True)
    return body


def _text(body: dict, field: str, required: bool = False) -> str:
    """A string field; absent or null is "" unless required. Lone surrogates (not UTF-8) are refused."""
    value = body.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(f"'{field}' is not valid text (UTF-8): {exc.reason} at position {exc.start}") from None
    return value


def _flag(body: dict, field: str, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise BadRequest(f"'{field}' must be true or false, got {value!r}")
    return value


def _tests(body: dict) -> dict:
    tests = body.get("tests")
    if not isinstance(tests, dict) or not isinstance(tests.get("inputs"), list) \
            or not isinstance(tests.get("outputs"), list):
        raise BadRequest("'tests' must be {inputs: [...], outputs: [...], fn_name?} with two lists")
    fn_name = tests.get("fn_name")
    if fn_name is not None and not (isinstance(fn_name, str) and fn_name.isidentifier()):
        raise BadRequest(f"'tests.fn_name' must be a function name, got {fn_name!r}")
    if not fn_name:
        for field in ("inputs", "outputs"):
            bad = next((i for i, v in enumerate(tests[field]) if not isinstance(v, str)), None)
            if bad is not None:
                raise BadRequest(f"stdin/stdout tests: tests.{field}[{bad}] must be a string, "
                                 f"got {type(tests[field][bad]).__name__}")
    return tests


def _tolerance(body: dict) -> float:
    value = body.get("float_tolerance", 0.0)
    if not _finite_number(value) or value < 0:
        raise BadRequest(f"float_tolerance must be a finite number >= 0, got {value!r}")
    return float(value)


def make_app(service: Service, parent_pid: int | None = None) -> web.Application:
    """The routes; with ``parent_pid`` the service stops when that process is gone (``--parent-pid``)."""
    routes = web.RouteTableDef()

    @routes.get("/health")
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "isolation": "bwrap" if service.isolated else "weak",
                                  "layers": isolation().describe(), "max_judge_s": service.max_judge_s,
                                  "running": service.running, "waiting": service.waiting,
                                  "max_concurrency": service.max_concurrency, "languages": sorted(LANGUAGES)})

    @routes.post("/run")
    async def run(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            limits = service.limits(body)
            stdin = _text(body, "stdin")
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
            tests = _tests(body)
            early_stop, tolerance = _flag(body, "early_stop", True), _tolerance(body)
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

        async def work():
            return await judge(body.get("language", "python"), body["code"], tests, limits, early_stop, tolerance,
                               service.isolated, deadline_s=service.max_judge_s)
        try:
            result = await service.admitted(work)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(result)

    app = web.Application(client_max_size=int(service.max_body_mb * 2**20))  # larger: 413
    app.add_routes(routes)
    if parent_pid:
        async def watch_parent(app: web.Application) -> None:
            async def watch() -> None:
                # re-parented (to init or a subreaper) once the parent is gone, even by SIGKILL
                while os.getppid() == parent_pid:
                    await asyncio.sleep(0.5)
                log.warning("parent process %d is gone: stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful shutdown
            app["parent_watch"] = asyncio.create_task(watch())
        app.on_startup.append(watch_parent)
    return app
