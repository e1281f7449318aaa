"""Server-sent events: a streamed answer (``/v1`` with ``"stream": true``, the Open Inference Protocol's
``generate_stream``) as ``text/event-stream``, one ``data:`` line of JSON per piece."""

import json
from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException
from fastapi.responses import StreamingResponse


async def event_stream(pieces: AsyncIterator[str], event: Callable[[str], dict]) -> StreamingResponse:
    """``event(piece)`` for each of ``pieces`` (``deploy.serving.ServedModel.stream``). A refusal before
    the first piece raises its ``HTTPException`` here, so the request is answered with its status; an
    error after it, once the 200 has been sent, is the last event: ``{"error": "..."}``."""
    try:
        first = [await anext(pieces)]
    except StopAsyncIteration:
        first = []

    async def body():
        try:
            for piece in first:
                yield server_sent(event(piece))
            async for piece in pieces:
                yield server_sent(event(piece))
        except HTTPException as err:
            yield server_sent({"error": str(err.detail)})
        finally:
            await pieces.aclose()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold the events back
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def server_sent(data: dict) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
