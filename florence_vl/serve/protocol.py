"""uvicorn's HTTP/1.1 protocol (h11) with two changes: malformed HTTP is answered in this API's JSON error
shape, and request headers must arrive in time.

- Requests that h11 cannot parse (a bad request line, a bad or repeated Content-Length, broken chunked
  encoding, a TLS hello on the plain port, headers over h11's limit) never reach the app: uvicorn answers
  them itself with a plain-text 400 and closes the connection. Here that answer is
  `{"error": {"message", "type", "code": "bad_http_request"}}` with a Content-Length, then the close.
- uvicorn has no timeout on request headers: a client that connects and sends nothing, or trickles its
  headers a byte at a time, holds its connection (a file descriptor) for ever. Here a request's headers must
  be complete within `header_timeout_s` of the connection (its first request) or of their first byte (later
  ones; between requests uvicorn's keep-alive timeout applies); past it the answer is 408 `header_timeout`
  and the connection is closed. The app's own body timeout (body_limit.py) takes over once they are in.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body


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

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and data:
                self._arm()  # a request is starting (a no-op while its timer runs)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # its headers are in: the app's body timeout applies
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

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
