"""POST /v1/chat/completions: OpenAI's chat API over the Florence-VL chat service, whole or streamed (SSE).

Streaming answers `text/event-stream`: `data: {chunk}` lines, each a `chat.completion.chunk` whose
`choices[0].delta` holds the new text (the first one the role), the last one `finish_reason`; with
`stream_options.include_usage` one more chunk with `usage` and no choices; then `data: [DONE]`.
Mistakes found before the answer starts (bad body, image, limits, queue full) are plain JSON errors
with their status; a failure after it started is a `data: {"error": ...}` event, then `[DONE]`.
A client that disconnects, streaming or not, cancels its job: out of the queue, or stopped in its batch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import InputError
from .batcher import BatcherClosed, QueueFull
from .chat_generation import Sampling
from .chat_request import ChatBody, parse_body, parse_messages
from .chat_service import ChatJob, ChatService
from .disconnect import ClientGone, until_disconnect
from .errors import ApiError, error_body

log = logging.getLogger("florence_vl.serve")


def _usage(result: dict) -> dict:
    return {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
            "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}


def _sse(data: dict | str) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def _watch_disconnect(request: Request, job: ChatJob, work):
    """Await `work`; if the client goes first, cancel the job and return None."""
    try:
        return await until_disconnect(request, work)
    except ClientGone:
        job.cancel()
        return None


def inline_refs(schema: dict) -> dict:
    """A pydantic model's JSON schema with its `$defs` written in place of every `$ref` (self-contained, as an
    operation's request schema in OpenAPI must be without components); the models here do not recurse."""
    defs = schema.get("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def add_chat_routes(app: FastAPI, chat: ChatService | None, require_key) -> None:
    # The route reads its raw body (so that every mistake gets this API's own error), hence no body parameter:
    # the schema is declared for OpenAPI (and schema-based fuzzing) from the model the body is parsed with.
    schema = {"requestBody": {"required": True,
                              "content": {"application/json": {"schema": inline_refs(ChatBody.model_json_schema())}}}}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)], openapi_extra=schema)
    async def completions(request: Request):
        body = parse_body(await request.body())
        if chat is None:
            raise ApiError(501, "no chat model is loaded: start the server with --vl-model DIR_OR_ID (a Florence-VL "
                           "checkpoint); this server runs Florence-2 tasks at POST /v1/florence2/tasks",
                           "chat_not_available")
        if body.model not in (None, chat.name):
            raise ApiError(404, f"model {body.model!r} does not chat here; /v1/models lists the chat model "
                           f"{chat.name!r}", "model_not_found")
        conversation = parse_messages(body.messages)
        sampling = Sampling.of(body.temperature, body.top_p)
        try:
            chat.batcher.refuse_if_full()  # before the image is decoded: a full server refuses at once
            row = await run_in_threadpool(chat.prepare, conversation, max_tokens=body.token_limit, stop=body.stops,
                                          logit_bias=body.logit_bias, sampling=sampling)
            job = await chat.start_job(row)
        except InputError as error:
            raise ApiError(400, str(error), "invalid_request") from None
        except QueueFull as error:
            raise ApiError(503, str(error), "queue_full", {"Retry-After": str(error.retry_after)}) from None
        except BatcherClosed as error:
            raise ApiError(503, str(error), "shutting_down", {"Retry-After": "5"}) from None
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": ident, "created": created, "model": chat.name}
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(job, head, usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            result = await _watch_disconnect(request, job, job.result())
        except BatcherClosed as error:  # the server stopped while this waited
            raise ApiError(503, str(error), "shutting_down", {"Retry-After": "5"}) from None
        if result is None:
            return Response(status_code=499)  # nobody reads it
        return {**head, "object": "chat.completion", "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                             "logprobs": None, "finish_reason": result["finish_reason"]}],
                "usage": _usage(result)}


async def _stream(job: ChatJob, head: dict, include_usage: bool):
    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse({**head, "object": "chat.completion.chunk", "system_fingerprint": None,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        async for piece in job.deltas():
            yield chunk({"content": piece})
        result = await job.result()
        yield chunk({}, result["finish_reason"])
        if include_usage:
            yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(result)})
    except asyncio.CancelledError:  # the client went away: starlette cancels the stream
        job.cancel()
        raise
    except Exception:  # noqa: BLE001 - the answer has started; report it in the stream
        log.exception("chat stream failed")
        yield _sse(error_body(500, "internal server error while generating (see the server log)", "internal_error"))
    finally:
        job.cancel()
    yield _sse("[DONE]")
