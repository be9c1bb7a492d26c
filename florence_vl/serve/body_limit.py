"""An ASGI middleware that refuses request bodies over a size limit with 413, before the app parses them.

The body is read here (chunked uploads included), counted, and replayed to the app; after the replay,
`receive` passes through, so the app still hears the client disconnect.
"""

from __future__ import annotations

import json

from .errors import error_body


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed_receive():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed_receive, send)

    async def _refuse(self, send):
        payload = json.dumps(error_body(413, f"request body is larger than this server's limit of "
                                        f"{self.max_bytes} bytes", "body_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
