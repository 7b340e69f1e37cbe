"""The HTTP API as a Starlette app.

    app = create_app(service)                                  # a ready TranslationService
    app = create_app(loader=load_service)                      # loads in a thread; /ready says 503 until it is done

Endpoints: POST /translate (LibreTranslate), POST /v1/translate, GET /languages, /health, /ready, /metrics.
Every accepted request is answered once: 200, 400 (a bad request, naming the problem; 501 for what the engine
does not do, e.g. sampling in an engine without it), 503 with Retry-After (the
queue is full, the model is loading, or the server is stopping), 504 (past the request timeout; its lines are
withdrawn from the engine), 500 (the engine failed). A client that disconnects has its lines withdrawn too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nllb_neuronx.engine_api import EngineClosed, QueueFull
from nllb_neuronx.serve.metrics import ServerMetrics
from nllb_neuronx.serve.schema import TranslateCall, parse_libretranslate, parse_v1
from nllb_neuronx.serve.service import RequestError, TranslationService

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # nginx's code for "client closed the request": counted in metrics, never sent


class _Answer(Exception):
    """An early answer: status, error message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class ServiceHolder:
    """The service once loaded; what went wrong if loading failed."""

    def __init__(self, service: TranslationService | None = None):
        self.service, self.error = service, None
        self.loaded = threading.Event()
        if service is not None:
            self.loaded.set()

    def load(self, loader: Callable[[], TranslationService], on_error: Callable[[], None] | None = None) -> None:
        try:
            self.service = loader()
        except BaseException as e:  # reported by /ready and by the server's exit (the CLI prints bad input's reason)
            if not isinstance(e, (ValueError, FileNotFoundError)):
                log.exception("loading the model failed")
            self.error = e
            if on_error is not None:
                on_error()
        finally:
            self.loaded.set()


def create_app(service: TranslationService | None = None, *, loader: Callable[[], TranslationService] | None = None,
               request_timeout_s: float | None = 60.0, retry_after_s: int = 1, metrics: ServerMetrics | None = None,
               on_load_error: Callable[[], None] | None = None) -> Starlette:
    """`loader` runs in a thread at startup; `on_load_error` is called if it fails (the CLI stops the server)."""
    if (service is None) == (loader is None):
        raise ValueError("give a service or a loader, not both and not neither")
    holder = ServiceHolder(service)
    api = _Api(holder, metrics or ServerMetrics(), request_timeout_s, retry_after_s)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if loader is not None:
            threading.Thread(target=holder.load, args=(loader, on_load_error), name="load-model", daemon=True).start()
        yield
        if holder.service is not None:  # in-flight requests are answered by now: finish the engine's work, stop it
            await asyncio.to_thread(holder.service.engine.close, True)

    routes = [Route("/translate", api.translate_libre, methods=["POST"]),
              Route("/v1/translate", api.translate_v1, methods=["POST"]),
              Route("/languages", api.languages, methods=["GET"]),
              Route("/health", api.health, methods=["GET"]),
              Route("/ready", api.ready, methods=["GET"]),
              Route("/metrics", api.metrics_text, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.holder, app.state.metrics = holder, api.metrics
    return app


class _Api:
    def __init__(self, holder: ServiceHolder, metrics: ServerMetrics, timeout_s: float | None, retry_after_s: int):
        self.holder, self.metrics, self.timeout_s = holder, metrics, timeout_s
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self._languages: bytes | None = None

    # ------------------------------------------------------------------------------------------- small endpoints
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.holder.service is not None:
            self.metrics.ready.set(1)
            service = self.holder.service
            return JSONResponse({"status": "ready", "model": service.model_name,
                                 "engine": type(service.engine).__name__})
        if self.holder.error is not None:
            return JSONResponse({"status": "failed", "error": f"loading the model failed: {self.holder.error}"}, 503)
        return JSONResponse({"status": "loading"}, 503, headers=self.retry_after)

    async def metrics_text(self, request: Request) -> Response:
        service = self.holder.service
        body = self.metrics.render(service.engine.stats if service is not None else None)
        return Response(body, media_type=self.metrics.content_type)

    async def languages(self, request: Request) -> Response:
        """LibreTranslate's shape: [{"code", "name", "targets"}]; every code is a source and a target."""
        service = self.holder.service
        if service is None:
            return JSONResponse({"error": "the model is loading"}, 503, headers=self.retry_after)
        if self._languages is None:
            codes = service.language_codes()
            self._languages = json.dumps([{"code": c, "name": c, "targets": codes} for c in codes]).encode()
        return Response(self._languages, media_type="application/json")

    # ---------------------------------------------------------------------------------------------- translation
    async def translate_libre(self, request: Request) -> Response:
        def respond(call: TranslateCall, result) -> dict:
            return {"translatedText": result.translations[0] if call.single else result.translations}
        return await self._translate(request, "/translate", parse_libretranslate, respond)

    async def translate_v1(self, request: Request) -> Response:
        def respond(call: TranslateCall, result) -> dict:
            return {"translations": result.translations, "model": self.holder.service.model_name,
                    "usage": {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens}}
        return await self._translate(request, "/v1/translate", parse_v1, respond)

    async def _translate(self, request: Request, endpoint: str, parse, respond) -> Response:
        start = time.perf_counter()
        try:
            payload, status, headers = await self._run(request, parse, respond), 200, {}
        except _Answer as a:
            payload, status, headers = {"error": str(a)}, a.status, a.headers
        except Exception as e:  # noqa: BLE001 - the engine failed: still one answer, with the reason
            log.exception("translation failed")
            payload, status, headers = {"error": f"translation failed: {type(e).__name__}: {e}"}, 500, {}
        self.metrics.observe(endpoint, status, time.perf_counter() - start)
        if status == CLIENT_GONE:
            return Response(status_code=CLIENT_GONE)  # nobody reads it
        return JSONResponse(payload, status, headers=headers)

    async def _run(self, request: Request, parse, respond) -> dict:
        service = self.holder.service
        if service is None:
            raise _Answer(503, "the model is loading; retry when GET /ready answers 200", self.retry_after)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _Answer(400, f"the request body is not valid JSON: {e}") from None
        try:
            call = parse(body)
            job = service.prepare(call.texts, call.source, call.target, call.options)
        except RequestError as e:
            raise _Answer(400, str(e)) from None
        try:
            futures = service.submit(job)
        except QueueFull:
            self.metrics.cancelled.labels("overload").inc(len(job.requests))
            raise _Answer(503, "the server is at capacity (its queue is full); retry later", self.retry_after) from None
        except EngineClosed:
            raise _Answer(503, "the server is shutting down", self.retry_after) from None
        try:
            outputs = await self._wait(request, futures)
        except ValueError as e:                  # the engine refused a line
            raise _Answer(400, str(e)) from None
        except NotImplementedError as e:
            raise _Answer(501, str(e)) from None
        result = service.finish(job, outputs)
        self.metrics.lines.inc(len(job.requests))
        self.metrics.input_tokens.inc(result.input_tokens)
        self.metrics.output_tokens.inc(result.output_tokens)
        return respond(call, result)

    async def _wait(self, request: Request, futures: list[concurrent.futures.Future]) -> list:
        """The futures' results; on the timeout or a disconnect, every unfinished line is withdrawn."""
        gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        disconnect = asyncio.ensure_future(_client_disconnect(request))
        try:
            done, _ = await asyncio.wait({gathered, disconnect}, timeout=self.timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if gathered in done:
                return gathered.result()
            reason = "disconnect" if disconnect in done else "timeout"
            withdrawn = sum(1 for f in futures if not f.done() and f.cancel())
            self.metrics.cancelled.labels(reason).inc(withdrawn)
            if reason == "disconnect":
                raise _Answer(CLIENT_GONE, "the client disconnected")
            raise _Answer(504, f"the translation took longer than the request timeout ({self.timeout_s} s); its "
                               "lines were withdrawn: send fewer or shorter texts, or retry")
        finally:
            disconnect.cancel()
            for f in futures:  # after a failure, a timeout or a disconnect: nothing of this request keeps running
                f.cancel()
            if not gathered.done():
                gathered.cancel()


async def _client_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is read already, so the next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
