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

Concurrent requests to one model are micro-batched: requests that queue while the model's
``max_parallel`` call slots are busy (plus those arriving within ``max_wait_ms``) go through one
onnxruntime call of up to ``max_batch`` texts. The queue is bounded by ``max_queue`` texts, so
overload is answered with 503 instead of growing.
"""

import asyncio
import ctypes
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, NamedTuple

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AliasChoices, BaseModel, Field

from deploy import connections, open_inference
from deploy.events import event_stream
from deploy.runtime import TRANSLATOR_TOKEN_BEAMS, Cancelled, Predictor, TooLarge, cancellable, load
from deploy.sequences import Sequence, SequenceStore, keeps_state
from zoo import tasks
from zoo.predict import GenerationOptions, options_for
from zoo.text import check_texts

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


@dataclass
class Limits:
    max_items: int = 64  # texts per request (413 beyond)
    max_text_chars: int = 10_000  # characters per text (413 beyond)
    max_body_bytes: int = 8 * 2**20  # request body, refused (413) before parsing; holds 64 x 10,000 escaped chars
    max_beam_tokens: int = TRANSLATOR_TOKEN_BEAMS  # translation: source tokens x beam per call (413 for one text over)
    max_attention_cells: int = 2**18  # translation with attention: target x source tokens answered (413 beyond)
    max_batch: int = 64  # texts per onnxruntime call
    max_wait_ms: float = 0.0  # how long a batch waits for more requests once a call slot is free
    max_queue: int = 1024  # texts waiting or running per model (503 beyond)
    max_parallel: int = os.cpu_count() or 1  # predictor calls running at once per model
    body_timeout_s: float = 30.0  # to receive a request's body (408 beyond)
    request_timeout_s: float = 60.0  # from the received body to the answer (504 beyond); the work stops too
    header_timeout_s: float = 10.0  # to receive a request's headers, from connecting or the last answer (closed beyond)
    max_connections: int = 512  # open connections; beyond, the longest wait for headers is closed (``connections``)
    max_sequences: int = 1024  # language-model sequences kept between requests (429 for a new one beyond)
    sequence_idle_s: float = 300.0  # a sequence without a request for this long is dropped (``deploy.sequences``)

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "max_wait_ms":
                valid, rule = 0 <= value < math.inf, "a finite number >= 0"
            elif field.type is float:
                valid, rule = 0 < value < math.inf, "a finite number > 0"
            else:
                valid, rule = value >= 1, "an integer >= 1"
            if not valid:
                raise ValueError(f"--{field.name} must be {rule}, got {value}")
        if self.max_queue < self.max_items:
            message = f"--max_queue {self.max_queue} is under --max_items {self.max_items}: a full request never fits"
            raise ValueError(message)


class TextsRequest(BaseModel):
    texts: list[str] = Field(min_length=1, description="raw texts")


class TagRequest(BaseModel):
    sentences: list[str] = Field(min_length=1, description="sentences; words are split on whitespace")


class TranslateRequest(TextsRequest):
    beam_size: int | None = Field(None, ge=1, le=16, description="1 = greedy; default: the model's")
    max_new_tokens: int | None = Field(
        None, ge=1, le=512, description="target token budget (``max_length``: its old name, still accepted)",
        validation_alias=AliasChoices("max_new_tokens", "max_length"),
    )  # fmt: skip
    attention: bool = Field(
        False, description="return each translation as {translation, source_tokens, target_tokens, attention}"
    )
    stream: bool = Field(False, description="answer one text's greedy translation as server-sent events, a token each")


FiniteNumber = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class ForecastRequest(BaseModel):
    series: list[list[list[FiniteNumber]]] = Field(
        min_length=1, description="windows, each the model's input_length rows of one number per column"
    )


class GenerateRequest(BaseModel):
    # Defaults are ``zoo.predict.GenerationOptions``', as at every entry point.
    prompts: list[str] = Field(min_length=1, description="texts to continue (may be empty strings)")
    max_new_tokens: int | None = Field(
        None, ge=1, le=1000, validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description=f"default {GenerationOptions.max_new_tokens} (``max_tokens``: its old name, still accepted)",
    )  # fmt: skip
    temperature: float | None = Field(
        None, ge=0.0, le=10.0, allow_inf_nan=False, description=f"default {GenerationOptions.temperature}; 0 is greedy"
    )
    top_k: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0)
    stream: bool = Field(False, description="answer one prompt's continuation as server-sent events, a token each")


@dataclass
class TaskAPI:
    """How one task is served (``zoo.tasks`` names it): its request schema and which field holds the
    items; the other fields are the task's options (``zoo.predict``). Every task answers
    ``{"model", "predictions"}``, the records ``predictor.predict`` gives at every entry point."""

    request: type[BaseModel]
    items_field: str
    limits: Callable[[Limits], dict] = lambda limits: {}  # the predictor's bounds on work per call
    # The response's key and shape before ``predictions`` (kept beside it for one release).
    legacy_key: str | None = None
    legacy: Callable[[dict], object] | None = None
    allow_empty: bool = False
    texts: bool = True  # the items are texts: checked for size, emptiness and encoding before they queue
    # The task's text as it is made (``Predictor.stream``): (predictor, params, limits) -> item -> pieces.
    stream: Callable[[Predictor, dict, Limits], Callable[[str], Iterator[str]]] | None = None

    def run(self, predictor: Predictor, items: list[str], params: dict, limits: Limits) -> list[dict]:
        return predictor.predict(items, options_for(predictor.task, **params), **self.limits(limits))

    def response(self, name: str, records: list[dict]) -> dict:
        answer = {"model": name, "predictions": records}
        if self.legacy_key is not None:
            answer[self.legacy_key] = [self.legacy(record) for record in records]
        return answer


CLASSIFICATION_API = TaskAPI(TextsRequest, "texts")
TAGGING_API = TaskAPI(TagRequest, "sentences")


def stream_translation(predictor: Predictor, params: dict, limits: Limits) -> Callable[[str], Iterator[str]]:
    if params.get("beam_size", 1) != 1 or params.get("attention"):
        raise ValueError("a streamed translation is greedy and without attention: send beam_size 1 or none")
    return lambda source: predictor.stream(source, params.get("max_new_tokens"), limits.max_beam_tokens)


TRANSLATION_API = TaskAPI(
    TranslateRequest,
    "texts",
    limits=lambda limits: {"budget": limits.max_beam_tokens, "attention_cells": limits.max_attention_cells},
    legacy_key="translations",  # the text alone, or with attention the record
    legacy=lambda record: record if "attention" in record else record["translation"],
    stream=stream_translation,
)
GENERATION_API = TaskAPI(
    GenerateRequest,
    "prompts",
    legacy_key="generations",
    legacy=lambda record: record["continuation"],
    allow_empty=True,
    stream=lambda predictor, params, _: lambda prompt: predictor.stream(prompt, options_for(predictor.task, **params)),
)
# A window's shape and values are checked by the task's predict (a 422 that names the window).
FORECAST_API = TaskAPI(ForecastRequest, "series", texts=False)


def task_api(predictor: Predictor) -> TaskAPI:
    return tasks.get(predictor.task).load("api")


class QueueFull(Exception):
    pass


class Queued(NamedTuple):
    items: list
    params: dict
    future: asyncio.Future
    run: Callable[[list], list] | None  # None: ``MicroBatcher.run`` with ``params``, batched with others


class MicroBatcher:
    """One worker per model. When a call slot is free (at most ``max_parallel`` predictor calls run at
    once; onnxruntime releases the GIL) it takes the oldest request together with every request that
    queued behind it, waiting up to ``max_wait_ms`` for more, and runs them, grouped by parameters, as
    one predictor call per group. Batches therefore grow with the load by themselves (requests queue
    while every slot is busy) and a lone request waits for nothing with ``max_wait_ms`` 0."""

    def __init__(self, run: Callable[[list[str], dict], list], limits: Limits, on_batch: Callable[[int], None]):
        """``on_batch`` is told the number of texts of every predictor call (for the metrics)."""
        self.run, self.limits, self.on_batch = run, limits, on_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.in_flight = 0  # texts queued or running
        self.worker: asyncio.Task | None = None
        self.running: set[asyncio.Task] = set()

    @contextmanager
    def reserve(self, count: int) -> Iterator[None]:
        """Room for ``count`` texts in the queue, from before a request waits for anything until it is
        answered (``QueueFull`` beyond ``max_queue``)."""
        if self.in_flight + count > self.limits.max_queue:
            raise QueueFull
        self.in_flight += count
        try:
            yield
        finally:
            self.in_flight -= count

    async def submit(self, items: list[str], params: dict, run: Callable[[list], list] | None = None) -> list:
        """The results for ``items``; with ``run`` (items -> results: a stream, a sequence) they run
        alone, through it, in a call slot as any other batch. The caller holds room (``reserve``)."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Queued(items, params, future, run))
        return await future

    async def work(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.limits.max_parallel)
        while True:
            batch = [await self.queue.get()]
            await slots.acquire()
            count, deadline = len(batch[0].items), loop.time() + self.limits.max_wait_ms / 1000
            while count < self.limits.max_batch:
                remaining = deadline - loop.time()
                try:
                    if remaining > 0:
                        batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                    else:
                        batch.append(self.queue.get_nowait())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                count += len(batch[-1].items)
            groups: dict[tuple, list] = {}
            for request in batch:
                if not request.future.done():  # else its client left or timed out: its texts are not run
                    key = tuple(sorted(request.params.items())) if request.run is None else id(request)
                    groups.setdefault(key, []).append(request)
            if not groups:
                slots.release()
            for index, requests in enumerate(groups.values()):
                if index:  # the first group runs in the slot taken above
                    await slots.acquire()
                task = asyncio.create_task(self._run_group(loop, requests))
                self.running.add(task)
                task.add_done_callback(lambda done: (self.running.discard(done), slots.release()))

    async def _run_group(self, loop, requests: list) -> None:
        requests = [request for request in requests if not request.future.done()]
        if not requests:
            return
        items = [item for request in requests for item in request.items]
        abandoned = threading.Event()  # once every request of the group timed out or lost its client

        def left(_) -> None:
            if all(request.future.done() for request in requests):
                abandoned.set()

        for request in requests:
            request.future.add_done_callback(left)
        try:
            first = requests[0]
            results = await loop.run_in_executor(None, self._run_cancellable, abandoned, items, first.params, first.run)
        except Cancelled:  # nobody waits for these results
            return
        except Exception as err:  # one request's bad input must not fail the others: run them alone
            if len(requests) > 1:
                for request in requests:
                    await self._run_group(loop, [request])
                return
            if not requests[0].future.done():
                requests[0].future.set_exception(err)
            return
        self.on_batch(len(items))
        start = 0
        for request in requests:
            if not request.future.done():
                request.future.set_result(results[start : start + len(request.items)])
            start += len(request.items)

    def _run_cancellable(self, abandoned: threading.Event, items: list[str], params: dict, run) -> list:
        with cancellable(abandoned):  # decoding stops at its next step once ``abandoned`` is set
            return self.run(items, params) if run is None else run(items)


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
        # Without onnxruntime's memory arena: it would hold each session's largest call for good (a soak of
        # mixed requests: +165 MB after warm-up with it, +16 MB without, at 99.7 and 95.4 requests/s).
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


@dataclass
class ServedModel:
    """One model as the service answers it: its task's API, micro-batcher and limits. Every protocol's
    route (``/v1``, the Open Inference Protocol's ``/v2``) predicts through ``predict``, so the limits,
    statuses and metrics are the same whichever a client speaks."""

    name: str
    predictor: Predictor
    api: TaskAPI
    batcher: MicroBatcher
    limits: Limits
    requests_total: Counter
    latency: Histogram
    sequences: SequenceStore | None = None  # a language model's, unless the service keeps none

    @property
    def ready(self) -> bool:
        return self.batcher.worker is not None and not self.batcher.worker.done()

    async def predict(self, items: list, params: dict, submit: Callable[[], Awaitable[list]] | None = None) -> list:
        """The records for ``items``, or an ``HTTPException`` with the status and message; ``submit``: how
        they reach the micro-batcher instead of batched with others (a stream, a sequence's turn). Its
        whole wait is queued and timed."""
        name, api, limits = self.name, self.api, self.limits
        start, status = time.perf_counter(), 200
        try:
            if len(items) > limits.max_items:
                raise HTTPException(413, f"{len(items)} {api.items_field}; at most {limits.max_items} per request")
            if api.texts:
                too_long = [i for i, text in enumerate(items) if len(text) > limits.max_text_chars]
                if too_long:
                    raise HTTPException(413, f"{api.items_field} {too_long} exceed {limits.max_text_chars} characters")
                empty = [i for i, text in enumerate(items) if not text.strip()]
                if empty and not api.allow_empty:
                    raise HTTPException(422, f"{api.items_field} {empty} are empty")
            try:
                if api.texts:
                    check_texts(items, api.items_field)
                with self.batcher.reserve(len(items)):
                    call = submit() if submit is not None else self.batcher.submit(items, params)
                    return await asyncio.wait_for(call, limits.request_timeout_s)
            except QueueFull:
                message = f"model {name!r} is at capacity ({limits.max_queue} queued texts); retry later"
                raise HTTPException(503, message) from None
            except asyncio.TimeoutError:
                message = f"no answer within request_timeout_s={limits.request_timeout_s:g} s; retry later or send less"
                raise HTTPException(504, message) from None
            except TooLarge as err:
                raise HTTPException(413, str(err)) from None
            except ValueError as err:
                raise HTTPException(422, str(err)) from None
            except Exception:
                log.exception(f"model {name!r} failed")  # a bug, not bad input: answered, the server goes on
                raise HTTPException(500, f"model {name!r} failed; the server log has the details") from None
        except HTTPException as err:
            status = err.status_code
            raise
        except asyncio.CancelledError:
            status = 499  # the client disconnected
            raise
        except Exception:
            status = 500
            raise
        finally:
            self.requests_total.labels(name, str(status)).inc()
            self.latency.labels(name).observe(time.perf_counter() - start)

    async def stream(self, item: str, params: dict) -> AsyncIterator[str]:
        """The pieces of ``item``'s answer as they are made (``TaskAPI.stream``), under ``predict``'s
        limits and statuses: an ``HTTPException`` before the first piece is the request's refusal, one
        after it ends the stream."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def run(items: list[str]) -> list:
            for piece in self.api.stream(self.predictor, params, self.limits)(items[0]):
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            return [None]

        work = asyncio.ensure_future(self.predict([item], params, lambda: self.batcher.submit([item], params, run)))
        try:
            while True:
                piece = asyncio.ensure_future(pieces.get())
                await asyncio.wait([piece, work], return_when=asyncio.FIRST_COMPLETED)
                if piece.done():
                    yield piece.result()
                    continue
                piece.cancel()
                while not pieces.empty():  # put before the work ended (the loop runs callbacks in order)
                    yield pieces.get_nowait()
                work.result()
                return
        finally:
            work.cancel()  # the client left: the decoding stops at its next step

    async def continue_sequence(self, sequence: Sequence, start: bool, prompt: str, params: dict) -> dict:
        """``prompt`` read into ``sequence`` (from an empty state when ``start``) and continued
        (``LanguageModelPredictor.continue_sequence``). The sequence's requests run in turn; waiting for
        its turn counts as queued and runs under the request's timeout, as any wait does."""

        async def in_turn() -> list:
            async with sequence.lock:
                carried = None if start else sequence.carried

                def run(items: list[str]) -> list:
                    options = options_for(self.predictor.task, **params)
                    return [self.predictor.continue_sequence(carried, items[0], options)]

                ((record, sequence.carried),) = await self.batcher.submit([prompt], params, run)
                return [record]

        (record,) = await self.predict([prompt], params, in_turn)
        return record


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


async def answer(send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(folders: list[str], host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    limits = Limits(**{k: v for k, v in options.items() if k in Limits.__dataclass_fields__})
    check_descriptors(limits.max_connections)
    allowed_hosts = options.get("allowed_hosts") or default_allowed_hosts(host)
    return_large_blocks_to_the_os()
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


def return_large_blocks_to_the_os() -> None:
    """glibc raises its mmap threshold as large blocks are freed and then serves them from heaps it
    seldom trims: a soak of mixed requests left the server 200-250 MB above its size after warm-up.
    A fixed threshold maps every block over 64 KB and unmaps it when freed, at no measured cost in speed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
