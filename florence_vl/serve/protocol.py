"""uvicorn's HTTP/1.1 protocol (h11) with three changes: malformed HTTP is answered in this API's JSON error
shape, request headers must arrive in time, and a connection closed with its request unread lingers.

- Requests that h11 cannot parse (a bad request line, a bad or repeated Content-Length, broken chunked
  encoding, a TLS hello on the plain port, headers over h11's limit) never reach the app: uvicorn answers
  them itself with a plain-text 400 and closes the connection. Here that answer is
  `{"error": {"message", "type", "code": "bad_http_request"}}` with a Content-Length, then the close.
- uvicorn has no timeout on request headers: a client that connects and sends nothing, or trickles its
  headers a byte at a time, holds its connection (a file descriptor) for ever. Here a request's headers must
  be complete within `header_timeout_s` of the connection (its first request) or of their first byte (later
  ones; between requests uvicorn's keep-alive timeout applies); past it the answer is 408 `header_timeout`
  and the connection is closed. The app's own body timeout (body_limit.py) takes over once they are in.
- A server that answers before it has read the whole request (413 `body_too_large` on a declared or counted
  size, a 408, a 400) and then closes makes its kernel answer the body bytes still coming with a reset; the
  reset makes clients that send the whole body before they read (urllib, requests, curl without
  `Expect: 100-continue`) fail with "broken pipe" / "connection reset" instead of showing the answer (measured:
  urllib lost the 413 for a 10 MB upload). Here such a close lingers, as Apache's and nginx's do (a close with
  nothing unread, an idle keep-alive at shutdown, stays a plain close):
  the answer goes out, then a FIN (the client reads the answer and then end of stream), and whatever the client
  still sends is read and dropped until it closes, sends nothing for `LINGER_IDLE_S`, or `LINGER_MAX_S` have
  passed; then the connection is closed. (The request itself is over by then: its --max-active slot is free.)
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

LINGER_IDLE_S = 2.0   # a closing connection waits this long for the client's next bytes ...
LINGER_MAX_S = 10.0   # ... and no longer than this in all


def _raw_answer(status: int, reason: bytes, payload: bytes) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(payload)) + payload)


BAD_HTTP = json.dumps(error_body(400, "malformed HTTP request (request line, headers or body framing)",
                                 "bad_http_request")).encode()


def json_error_protocol(header_timeout_s: float = 30.0) -> type[H11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with this header timeout."""
    timed_out = _raw_answer(408, b"Request Timeout", json.dumps(error_body(
        408, f"the request headers did not arrive within {header_timeout_s:g} s", "header_timeout")).encode())

    class JsonErrorH11Protocol(H11Protocol):
        _header_timer = None
        _lingering = False    # the answer is out and a FIN sent; what still comes in is dropped
        _linger_deadline = _linger_idle = None
        _lost = False

        def connection_made(self, transport) -> None:
            super().connection_made(_LingeringTransport(transport, self))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._lingering:  # the rest of a request that was answered: dropped
                self._linger_idle.cancel()
                self._linger_idle = self.loop.call_later(LINGER_IDLE_S, self.transport.raw.close)
                return
            if self.conn.their_state is h11.IDLE and data:
                self._arm()  # a request is starting (a no-op while its timer runs)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # its headers are in: the app's body timeout applies
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._lost = True
            self._disarm()
            for timer in (self._linger_deadline, self._linger_idle):
                if timer is not None:
                    timer.cancel()
            super().connection_lost(exc)

        def _close(self, raw) -> None:
            """What uvicorn's transport.close() does here: lingering if the client may still be sending."""
            if self._lingering:
                return
            unread = self.conn.their_state in (h11.SEND_BODY, h11.ERROR) or bool(self.conn.trailing_data[0])
            if not unread or self._lost or raw.is_closing() or not raw.can_write_eof() \
                    or raw.get_protocol() is not self:  # nothing to drain; TLS; a websocket upgrade
                raw.close()
                return
            self._lingering = True
            self._disarm()
            self._unset_keepalive_if_required()
            raw.write_eof()  # sent after the buffered answer: the client reads it, then the end of the stream
            self.flow.resume_reading()
            self._linger_deadline = self.loop.call_later(LINGER_MAX_S, raw.close)
            self._linger_idle = self.loop.call_later(LINGER_IDLE_S, raw.close)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.transport.write(timed_out)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self.transport.write(_raw_answer(400, b"Bad Request", BAD_HTTP))
            self.transport.close()

    return JsonErrorH11Protocol


class _LingeringTransport:
    """The connection's asyncio transport as uvicorn and its request cycles see it: the same, except that
    close() is the protocol's lingering close and is_closing() is true from its start."""

    def __init__(self, transport, protocol):
        self.raw = transport
        self._protocol = protocol

    def close(self) -> None:
        self._protocol._close(self.raw)

    def is_closing(self) -> bool:
        return self._protocol._lingering or self.raw.is_closing()

    def __getattr__(self, name):
        return getattr(self.raw, name)
