"""Connection guards under uvicorn: a deadline and a size cap for each request's head, and a bound on open
connections.

uvicorn has neither. Its keep-alive timeout restarts with every byte received, so a client that
trickles its headers (slowloris) holds a connection, and a file descriptor, for as long as it likes;
enough of them and accepting fails for everyone. Here a connection must complete each request's
headers within ``header_timeout_s`` of connecting (or of its previous answer), else it gets a 408 and
is closed. And once ``max_connections`` are open, a new connection closes the one that has waited
longest for its headers: a valid client sends its headers at once, so the connections that wait are
slow or idle ones. If every open connection is busy with a request instead, the new one gets a 503.
Nor does uvicorn cap a request's head: it appends each piece of an endless request line to what it has
(quadratic), so one connection sending megabytes of header slows every other. Here a head (request
line and headers) over ``MAX_HEAD_BYTES`` is a 431 and the connection is closed, whether it arrived
whole or is still coming. Bodies have their own deadline (``deploy.service.TransportLimits``,
``body_timeout_s``).
"""

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # a request line and headers; browsers and HTTP clients send a few KB
HEAD_TOO_LARGE = f"the request line and headers are over {MAX_HEAD_BYTES} bytes"


def refusal(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP response that closes the connection (written before any request was parsed)."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


async def answer(send, status: int, detail: str, close: bool = False) -> None:
    """An ASGI answer ``{"detail": detail}`` (the service's own refusals, before or beside its app)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def answer_too_large(scope, receive, send) -> None:
    """The ASGI answer to a head over ``MAX_HEAD_BYTES`` that arrived whole; the connection closes after it."""
    await answer(send, 431, HEAD_TOO_LARGE, close=True)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header deadline, the head cap and the connection bound,
    for ``uvicorn.Config(http=...)``."""
    late = f"the request headers took longer than header_timeout_s={header_timeout_s:g} s"
    too_slow = refusal(408, "Request Timeout", late)
    full = f"the server holds max_connections={max_connections} connections, all busy; retry later"
    busy = refusal(503, "Service Unavailable", full)
    too_large = refusal(431, "Request Header Fields Too Large", HEAD_TOO_LARGE)

    class GuardedProtocol(HttpToolsProtocol):
        waiting_since: float | None = None  # when it began waiting for a request's headers; None while serving one
        deadline = None  # the timer that closes it if the headers are late
        in_body = False  # from a request's headers to the end of its body; else the bytes are a head's
        head_bytes = 0  # bytes of the head being read, counted while it is incomplete
        heads = 0  # heads completed on this connection

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.wait_for_headers()  # first, so that no error below can leave it without a deadline
            if len(self.connections) > max_connections:
                # Only this class's connections wait for headers; any other protocol object counts as busy.
                waiting = [c for c in self.connections if c is not self and getattr(c, "waiting_since", None)]
                if not waiting:
                    self.refuse(busy)
                    return
                min(waiting, key=lambda c: c.waiting_since).refuse(too_slow)

        def wait_for_headers(self) -> None:
            self.waiting_since = self.loop.time()
            self.deadline = self.loop.call_later(header_timeout_s, self.refuse, too_slow)

        def stop_waiting(self) -> None:
            self.waiting_since = None
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def refuse(self, response: bytes) -> None:
            self.stop_waiting()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.head_bytes = 0

        def data_received(self, data: bytes) -> None:
            reading, heads = not self.in_body, self.heads
            super().data_received(data)
            # Counted when the whole chunk belongs to one head still incomplete after it; a head that
            # begins inside a chunk after a body is counted from the next chunk, so it may run one
            # chunk (at most 256 KiB) past the cap before it is refused.
            if reading and not self.in_body and self.heads == heads:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.refuse(too_large)

        def on_headers_complete(self) -> None:
            self.stop_waiting()
            self.in_body, self.heads = True, self.heads + 1
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size <= MAX_HEAD_BYTES:
                super().on_headers_complete()
                return
            app, self.app = self.app, answer_too_large  # the request cycle as usual, answered 431
            try:
                super().on_headers_complete()
            finally:
                self.app = app

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self.in_body = False

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A pipelined request may already be running; else the connection waits for the next one.
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing() and self.deadline is None:
                self.wait_for_headers()

        def _unsupported_upgrade_warning(self) -> None:
            pass  # WebSockets are off (no route uses them): an Upgrade header is ignored, not logged twice a request

        def connection_lost(self, exc) -> None:
            self.stop_waiting()
            super().connection_lost(exc)

    return GuardedProtocol
