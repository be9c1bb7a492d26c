"""An ASGI middleware that bounds how many requests with a body are inside the server at once.

The batchers' queues bound the requests waiting for a model; this bounds everything around them: bodies
being read (each up to the body limit, and held in memory), images being decoded, answers being drawn or
streamed. Past `Admitted.limit` a request is answered 503 + Retry-After at once, before its body is read,
so the server's memory stays bounded however many clients connect at the same time. GET and HEAD (the
page, /health, the model list) carry no body and are never refused: /health must answer when the server
is busiest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import error_body

OPEN_METHODS = ("GET", "HEAD")


@dataclass
class Admitted:
    """The limit and the counts, shared by the middleware and /health."""

    limit: int
    active: int = 0      # requests with a body inside the server now
    refused: int = 0

    def to_dict(self) -> dict:
        return {"active": self.active, "max": self.limit, "refused": self.refused}


class Admission:
    def __init__(self, app, admitted: Admitted, retry_after: int = 1):
        self.app = app
        self.admitted = admitted
        self.retry_after = retry_after

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in OPEN_METHODS:
            return await self.app(scope, receive, send)
        admitted = self.admitted
        if admitted.active >= admitted.limit:
            admitted.refused += 1
            return await self._refuse(send)
        admitted.active += 1  # one event loop: nothing runs between the test and the increment
        try:
            await self.app(scope, receive, send)
        finally:
            admitted.active -= 1

    async def _refuse(self, send):
        payload = json.dumps(error_body(503, f"server busy: {self.admitted.limit} requests are already in "
                                        f"progress; retry after {self.retry_after} s", "server_busy")).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"retry-after", str(self.retry_after).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
