"""``rnnzoo serve``: exported models over HTTP with FastAPI and uvicorn, without torch.

Endpoints: ``GET /v1/models``, ``POST /v1/models/{name}/predict`` (the request schema depends on
the model's task; see ``/docs``), ``GET /healthz``, ``GET /readyz``, Prometheus ``GET /metrics`` and
a demo page to try the models in a browser, ``GET /``.
Bad input is a 4xx with a message: 422 for a wrong type, an empty text, a lone surrogate or a forecast
window of the wrong shape or with a value that is not a finite number, 413 for
too many texts (or windows), a text over the size limit, a body over ``max_body_bytes`` (refused before it is
parsed), a text too long to translate at the beam asked for or attention weights over
``max_attention_cells``, 408 for headers slower than ``header_timeout_s`` or a body slower than
``body_timeout_s``, 404 for an unknown model. 503 says the model's queue is full, 504 that the
answer took longer than ``request_timeout_s``. A client that disconnects drops its queued texts, and
decoding that nobody waits for any more (timed out, client gone) stops at its next step.

Each model is answered through ``deploy.serving`` (limits, micro-batching) by its task's module in
``deploy.tasks``; this module is the app around them and the HTTP server's settings.
"""

import asyncio
import logging
import os
import resource
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from deploy import connections, open_inference
from deploy.connections import answer
from deploy.events import event_stream
from deploy.runtime import Predictor, load
from deploy.sequences import SequenceStore, keeps_state
from deploy.serving import Limits, MicroBatcher, ServedModel, task_api
from zoo.common import allocator

log = logging.getLogger(__name__)

DEMO = Path(__file__).with_name("demo")  # the demo page at GET /: static files, no build step
# The page loads nothing but its own files, so a text that slipped into the markup could run no script.
DEMO_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class DemoFiles(StaticFiles):
    """The demo page's files, each with the page's headers (``/demo/index.html`` is the page too)."""

    async def get_response(self, path: str, scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(DEMO_HEADERS)
        return response


def create_app(
    folders: list[str | os.PathLike],
    limits: Limits | None = None,
    threads: int | None = None,
    allowed_hosts: list[str] | None = None,
    sequences: bool = True,
) -> FastAPI:
    """The service for exported model ``folders``; a model's name is its folder's name. With
    ``allowed_hosts``, a request whose ``Host`` header names another host is a 400 (a page on another
    site that rebinds its DNS name to 127.0.0.1 cannot read the service). ``sequences``: keep language
    models' sequences between requests (``deploy.sequences``); a service whose requests may reach
    another process for the next chunk (several Ray replicas) refuses them instead."""
    limits = limits or Limits()
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    predictors: dict[str, Predictor] = {}
    for folder in map(Path, folders):
        if folder.name in predictors:
            raise ValueError(f"two model folders are named {folder.name!r}")
        # Without onnxruntime's memory arena, which would hold each session's largest call for good
        # (docs/security.md has what the soak measured with and without it).
        predictors[folder.name] = load(folder, threads, memory_arena=False)
    apis = {name: task_api(predictor) for name, predictor in predictors.items()}
    registry = CollectorRegistry()
    requests_total = Counter("rnnzoo_requests", "Prediction requests", ["model", "status"], registry=registry)
    latency = Histogram("rnnzoo_request_seconds", "Prediction latency", ["model"], registry=registry)
    batch_size = Histogram(
        "rnnzoo_batch_texts", "Texts per predictor call", ["model"], registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64)
    )
    batchers = {
        name: MicroBatcher(
            lambda items, params, p=predictor, api=apis[name]: api.run(p, items, params, limits),
            limits,
            batch_size.labels(name).observe,
        )
        for name, predictor in predictors.items()
    }
    stores = {
        name: SequenceStore(limits.max_sequences, limits.sequence_idle_s)
        for name, predictor in predictors.items()
        if sequences and keeps_state(predictor)
    }
    served = {
        name: ServedModel(
            name, predictor, apis[name], batchers[name], limits, requests_total, latency, stores.get(name)
        )
        for name, predictor in predictors.items()
    }
    open_sequences = Gauge("rnnzoo_open_sequences", "Sequences kept between requests", ["model"], registry=registry)
    for name, store in stores.items():
        open_sequences.labels(name).set_function(lambda store=store: len(store))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for batcher in batchers.values():
            batcher.worker = asyncio.create_task(batcher.work())
        yield
        for batcher in batchers.values():
            batcher.worker.cancel()

    app = FastAPI(title="rnnzoo", description=__doc__.split("\n\n")[1], lifespan=lifespan)
    app.add_middleware(TransportLimits, limits=limits)
    if allowed_hosts and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)  # outermost: before any body is read

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, which JSON cannot always carry back (NaN, a lone surrogate).
        detail = [
            {"loc": list(e["loc"]), "msg": e["msg"] + (f": {e['ctx']['error']}" if e["type"] == "json_invalid" else "")}
            for e in err.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", include_in_schema=False)
    def demo_page() -> FileResponse:
        return FileResponse(DEMO / "index.html", headers=DEMO_HEADERS)

    app.mount("/demo", DemoFiles(directory=DEMO), name="demo")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        if not all(model.ready for model in served.values()):
            raise HTTPException(503, "models are not ready")
        return {"status": "ready", "models": sorted(predictors)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    def list_models() -> dict:
        return {"models": [describe(name, p) for name, p in predictors.items()]}

    def describe(name: str, predictor: Predictor) -> dict:
        model = {"name": name, "task": predictor.task, "labels": predictor.config.labels}
        model["request"] = apis[name].request.__name__
        store = served[name].sequences
        if store is not None:
            bounds = {"max_sequences": store.max_sequences, "idle_s": store.idle_s}
            model["sequences"] = bounds | {"state_bytes": predictor.state_bytes}
        return model | predictor.description()

    for model in served.values():
        _add_predict_route(app, model)
    open_inference.add_routes(app, served)

    @app.post("/v1/models/{name}/predict", include_in_schema=False)
    def unknown_model(name: str):
        raise HTTPException(404, f"unknown model {name!r}; available: {', '.join(sorted(predictors))}")

    return app


def _add_predict_route(app: FastAPI, model: ServedModel) -> None:
    api = model.api

    async def predict(request: api.request):  # type: ignore[valid-type]
        items = getattr(request, api.items_field)
        params = request.model_dump(exclude={api.items_field, "stream"}, exclude_none=True)
        if getattr(request, "stream", False):
            if len(items) != 1:
                raise HTTPException(422, f"a stream answers one of the {api.items_field}; send one")
            return await event_stream(model.stream(items[0], params), lambda piece: {"delta": piece})
        return api.response(model.name, await model.predict(items, params))

    app.post(f"/v1/models/{model.name}/predict", summary=f"{model.name}: {api.request.__name__}")(predict)


class TransportLimits:
    """ASGI middleware that reads a request's body before the app does: 413 as soon as it is over
    ``max_body_bytes`` (by its Content-Length, or counted as it streams), 408 when it takes longer
    than ``body_timeout_s``. It then runs the app, cancelled when the client disconnects (so that its
    queued texts are dropped), and answers an exception that escapes the app with a 500 itself: the
    server would otherwise close the connection, and with it the client's next requests."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"the request body is over max_body_bytes={self.limits.max_body_bytes}; send fewer texts"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return await answer(send, 413, too_large)
        try:
            body = await asyncio.wait_for(self.read_body(receive), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            message = f"the request body took longer than body_timeout_s={self.limits.body_timeout_s:g} s to arrive"
            return await answer(send, 408, message, close=True)
        if body is None:  # the client left
            return
        if len(body) > self.limits.max_body_bytes:
            return await answer(send, 413, too_large)
        await self.run(scope, receive, send, body)

    async def read_body(self, receive) -> bytes | None:
        """The body, or as much as makes it over the limit; None if the client disconnects."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.limits.max_body_bytes or not message.get("more_body"):
                return bytes(body)

    async def run(self, scope, receive, send, body: bytes) -> None:
        gone, started, complete = asyncio.Event(), False, False

        async def replay():
            nonlocal body
            if body is not None:
                message, body = {"type": "http.request", "body": body, "more_body": False}, None
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked(message):
            nonlocal started, complete
            started = True
            complete = message["type"] == "http.response.body" and not message.get("more_body")
            await send(message)

        app = asyncio.ensure_future(self.app(scope, replay, tracked))
        watch = asyncio.ensure_future(receive())  # answers once the client disconnects (or the response is complete)
        try:
            await asyncio.wait([app, watch], return_when=asyncio.FIRST_COMPLETED)
            if not app.done() and not complete:
                gone.set()
                app.cancel()
            await app
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
        except Exception:
            log.exception("request failed")
            if not started:
                await answer(send, 500, "the server failed; its log has the details")
        finally:
            watch.cancel()
            app.cancel()


def serve(folders: list[str], host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    limits = Limits(**{k: v for k, v in options.items() if k in Limits.__dataclass_fields__})
    check_descriptors(limits.max_connections)
    allowed_hosts = options.get("allowed_hosts") or default_allowed_hosts(host)
    allocator.return_freed_memory()  # or the server stays at the size of its largest calls
    app = create_app(folders, limits, options.get("threads"), allowed_hosts)
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port)).run()


def uvicorn_config(app: FastAPI, limits: Limits, **options):
    """uvicorn's settings for the service: its HTTP protocol with the header deadline, the head cap and
    the bound on connections (``deploy.connections``), and no WebSockets, which no route uses;
    ``options`` go to ``uvicorn.Config`` (host, port...)."""
    import uvicorn

    protocol = connections.guarded_protocol(limits.header_timeout_s, limits.max_connections)
    return uvicorn.Config(app, http=protocol, ws="none", log_level="warning", **options)


RESERVED_DESCRIPTORS = 64  # model files, onnxruntime, logs: beside one descriptor per connection


def check_descriptors(max_connections: int) -> None:
    """Refuse a connection bound the process cannot open: beyond the descriptor limit, accepting a
    connection fails and every client is turned away, the very outage the bound prevents."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise ValueError(
            f"--max_connections {max_connections} needs {needed} file descriptors and this process may open "
            f"{soft} (ulimit -n): lower --max_connections or raise the limit"
        )


LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]"]


def default_allowed_hosts(host: str) -> list[str]:
    """A service bound to the loopback answers only requests that name it so; one bound to another
    address answers any name (``--allowed_hosts`` narrows it)."""
    return LOOPBACK if host in LOOPBACK else ["*"]
