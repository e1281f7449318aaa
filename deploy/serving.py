"""How the service answers each model, whatever its task or protocol: the limits, each task's API
record (``TaskAPI``, written by the task's module in ``deploy.tasks``), the micro-batcher and the
served model every route predicts through.

Concurrent requests to one model are micro-batched: requests that queue while the model's
``max_parallel`` call slots are busy (plus those arriving within ``max_wait_ms``) go through one
onnxruntime call of up to ``max_batch`` texts. The queue is bounded by ``max_queue`` texts, so
overload is answered with 503 instead of growing.
"""

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import NamedTuple

from fastapi import HTTPException
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from deploy.runtime import Cancelled, Predictor, cancellable
from deploy.sequences import Sequence, SequenceStore
from zoo.common import tasks
from zoo.common.predict import TooLarge, options_for
from zoo.common.predict.translation import TOKEN_BEAMS
from zoo.common.text import check_texts

log = logging.getLogger(__name__)


@dataclass
class Limits:
    max_items: int = 64  # texts per request (413 beyond)
    max_text_chars: int = 10_000  # characters per text (413 beyond)
    max_body_bytes: int = 8 * 2**20  # request body, refused (413) before parsing; holds 64 x 10,000 escaped chars
    max_beam_tokens: int = TOKEN_BEAMS  # translation: source tokens x beam per call (413 for one text over)
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



@dataclass
class TaskAPI:
    """How one task is served (``zoo.common.tasks`` names it): its request schema and which field holds the
    items; the other fields are the task's options (``zoo.common.predict``). Every task answers
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
