"""Connection guards under uvicorn: a deadline for each request's headers and a bound on open connections.

uvicorn has neither. Its keep-alive timeout restarts with every byte received, so a client that
trickles its headers (slowloris) holds a connection, and a file descriptor, for as long as it likes;
enough of them and accepting fails for everyone. Here a connection must complete each request's
headers within ``header_timeout_s`` of connecting (or of its previous answer), else it gets a 408 and
is closed. And once ``max_connections`` are open, a new connection closes the one that has waited
longest for its headers: a valid client sends its headers at once, so the connections that wait are
slow or idle ones. If every open connection is busy with a request instead, the new one gets a 503.
Bodies have their own deadline (``deploy.service.TransportLimits``, ``body_timeout_s``).
"""

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def refusal(status: int, reason: str, detail: str) -> bytes:
    """A complete HTTP response that closes the connection (written before any request was parsed)."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the header deadline and the connection bound, for
    ``uvicorn.Config(http=...)``."""
    late = f"the request headers took longer than header_timeout_s={header_timeout_s:g} s"
    too_slow = refusal(408, "Request Timeout", late)
    full = f"the server holds max_connections={max_connections} connections, all busy; retry later"
    busy = refusal(503, "Service Unavailable", full)

    class GuardedProtocol(HttpToolsProtocol):
        waiting_since: float | None = None  # when it began waiting for a request's headers; None while serving one
        deadline = None  # the timer that closes it if the headers are late

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.deadline = None
            if len(self.connections) > max_connections:
                waiting = [c for c in self.connections if c is not self and c.waiting_since is not None]
                if not waiting:
                    transport.write(busy)
                    transport.close()
                    return
                min(waiting, key=lambda c: c.waiting_since).headers_timed_out()
            self.wait_for_headers()

        def wait_for_headers(self) -> None:
            self.waiting_since = self.loop.time()
            self.deadline = self.loop.call_later(header_timeout_s, self.headers_timed_out)

        def stop_waiting(self) -> None:
            self.waiting_since = None
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def headers_timed_out(self) -> None:
            self.stop_waiting()
            if not self.transport.is_closing():
                self.transport.write(too_slow)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self.stop_waiting()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A pipelined request may already be running; else the connection waits for the next one.
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing() and self.deadline is None:
                self.wait_for_headers()

        def connection_lost(self, exc) -> None:
            self.stop_waiting()
            super().connection_lost(exc)

    return GuardedProtocol
