"""An ASGI middleware that reads a request's body under two limits before the app parses it: its size
(413 `body_too_large`, chunked uploads included) and its time (408 `body_timeout`).

The body is read here, counted, and replayed to the app; after the replay, `receive` passes through, so the
app still hears the client disconnect. The whole body must arrive within `timeout_s` of the request's
headers: a client that trickles its body (slowloris) or stops sending it is answered 408 and its connection
closed when that time is up, which frees its `--max-active` slot (the admission middleware counts the
request until this returns).
"""

from __future__ import annotations

import asyncio
import json

from .errors import error_body


class BodyLimit:
    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, f"request body is larger than this server's limit of "
                                      f"{self.max_bytes} bytes", "body_too_large")
        # asyncio.timeout_at, not wait_for: receive() runs in this task, so a body already here is taken at
        # once, before a disconnect that follows it is noticed (as without a timeout).
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        chunks, size = [], 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return await self._refuse(send, 408, f"the request body did not arrive within {self.timeout_s:g} s "
                                          f"({size} bytes came)", "body_timeout")
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(send, 413, f"request body is larger than this server's limit of "
                                          f"{self.max_bytes} bytes", "body_too_large")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed_receive, send)

    async def _refuse(self, send, status: int, message: str, code: str):
        payload = json.dumps(error_body(status, message, code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
