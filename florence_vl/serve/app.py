"""The HTTP API: FastAPI routes over the services, one error shape, limits, the optional API key.

    GET  /                      the web page (static HTML + JS)
    GET  /health                liveness, queue depth, batching counters
    GET  /v1/models             OpenAI-style model list
    GET  /v1/florence2/tasks    the task table (name, token, input kind, description)
    POST /v1/florence2/tasks    {"image", "task", "text"?, "region"?, "num_beams"?, "max_new_tokens"?, "draw"?}
    POST /v1/chat/completions   OpenAI chat over Florence-VL (chat_routes.py); 501 when no chat model is loaded
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError
from ..florence2.export import results_to_json
from ..florence2.runner import TaskRequest
from ..florence2.tasks import TASKS
from .admission import Admission, Admitted
from .batcher import BatcherClosed, QueueFull
from .body_limit import BodyLimit
from .chat_routes import add_chat_routes
from .disconnect import ClientGone, until_disconnect
from .errors import ApiError, error_body
from .florence2_service import Florence2Service, GenerationOptions
from .image_source import decode_image_source
from .settings import ServeSettings

log = logging.getLogger("florence_vl.serve")
STATIC = files("florence_vl.serve") / "static"


class TaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="data: URL, base64 image bytes, or a path under the server's --allow-dir")
    task: str = Field(description="task name, e.g. OD or <OD>")
    text: str | None = None
    region: list[float] | str | None = Field(None, description="x0,y0,x1,y1 in pixels of the image")
    num_beams: int | None = Field(None, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)
    draw: bool = Field(False, description="also return the drawn result as a PNG data: URL")
    model: str | None = None


def _png_data_url(image, result) -> str:
    from ..viz import draw_result

    buffer = io.BytesIO()
    draw_result(image, result).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _api_wording(message: str) -> str:
    """The task table speaks of the CLI's --text/--region; over HTTP they are the "text"/"region" fields."""
    message = message.replace("--region x0,y0,x1,y1", '"region" [x0, y0, x1, y1]')
    return message.replace("--text", '"text"').replace("--region", '"region"')


def _validation_message(errors: list[dict]) -> str:
    first = (errors or [{}])[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}"
    return f"{where}: {first.get('msg', 'invalid value')}"


def create_app(service: Florence2Service, settings: ServeSettings | None = None, chat=None) -> FastAPI:
    """`chat`: a ChatService (Florence-VL) for /v1/chat/completions, or None (that endpoint answers 501)."""
    settings = settings or ServeSettings(model_name=service.name)
    services = [service] + ([chat] if chat is not None else [])

    @asynccontextmanager
    async def lifespan(app):
        for s in services:
            await s.start()
        try:
            yield
        finally:
            for s in services:
                await s.stop()

    app = FastAPI(title="florence-vl", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    admitted = Admitted(settings.active_limit)
    app.add_middleware(Admission, admitted=admitted)  # outermost: refuses before a body is read
    app.state.service = service
    app.state.chat = chat
    app.state.settings = settings

    # -- errors: always {"error": {...}}, never a stack trace ----------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, error: RequestValidationError):
        return JSONResponse(error_body(400, _validation_message(error.errors()), "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, error: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(error.status_code,
                                                                                   str(error.detail))
        return JSONResponse(error_body(error.status_code, message, "http_error"), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request, error: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error (see the server log)", "internal_error"),
                            status_code=500)

    # -- auth ------------------------------------------------------------------------------------

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)", "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})

    # -- routes ----------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/health")
    async def health():
        def queue(batcher):
            return {"waiting": batcher.waiting, "running": batcher.running, "max": batcher.max_queue}

        def batching(batcher):
            return {"max_batch_size": batcher.max_batch_size, "window_ms": batcher.window_s * 1000,
                    **batcher.stats.to_dict()}

        batcher = service.batcher
        answer = {"status": "ok", "models": [s.name for s in services], "auth": settings.api_key is not None,
                  "queue": queue(batcher), "batching": batching(batcher), "chat": None,
                  "admission": admitted.to_dict()}
        if chat is not None:
            answer["chat"] = {"model": chat.name, "queue": queue(chat.batcher), "batching": batching(chat.batcher),
                              "limits": chat.limits(), **chat.stats.to_dict()}
        return answer

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models():
        return {"object": "list", "data": [s.model_card() for s in services]}

    @app.get("/v1/florence2/tasks")
    async def task_table():
        return {"object": "list", "data": [{"name": t.name, "token": t.token, "input": t.input,
                                            "description": t.description} for t in TASKS.values()],
                "limits": {"max_prompt_chars": settings.max_prompt_chars, "max_new_tokens": settings.max_new_tokens,
                           "max_beams": settings.max_beams, "default_beams": settings.default_beams,
                           "max_image_pixels": settings.max_image_pixels, "max_body_bytes": settings.max_body_bytes,
                           "body_timeout_s": settings.body_timeout_s, "header_timeout_s": settings.header_timeout_s}}

    task_schema = {"requestBody": {"content": {"application/json": {"schema": TaskBody.model_json_schema()}}}}

    @app.post("/v1/florence2/tasks", dependencies=[Depends(require_key)], openapi_extra=task_schema)
    async def run_task(request: Request):
        try:  # JSON whatever the Content-Type says (curl -d sends a form type)
            body = TaskBody.model_validate_json(await request.body())
        except ValidationError as error:
            raise ApiError(400, _validation_message(error.errors()), "invalid_request") from None
        if body.model not in (None, service.name):
            raise ApiError(404, f"model {body.model!r} is not served here; /v1/models lists {service.name!r}",
                           "model_not_found")
        if body.text is not None and len(body.text) > settings.max_prompt_chars:
            raise ApiError(400, f"text is {len(body.text)} characters; this server takes at most "
                           f"{settings.max_prompt_chars}", "prompt_too_long")
        max_new_tokens = body.max_new_tokens or settings.max_new_tokens
        if max_new_tokens > settings.max_new_tokens:
            raise ApiError(400, f"max_new_tokens {max_new_tokens} is over this server's limit of "
                           f"{settings.max_new_tokens}", "max_new_tokens_too_large")
        num_beams = body.num_beams or settings.default_beams
        if num_beams > settings.max_beams:
            raise ApiError(400, f"num_beams {num_beams} is over this server's limit of {settings.max_beams}",
                           "num_beams_too_large")

        def prepare() -> TaskRequest:  # decoding and tokenizing stay off the event loop
            image = decode_image_source(body.image, allow_dirs=settings.allow_dirs,
                                        max_pixels=settings.max_image_pixels)
            task_request = TaskRequest(image, body.task, body.text, body.region)
            service.check(task_request)
            return task_request

        started = time.monotonic()
        try:
            service.batcher.refuse_if_full()  # before the image is decoded: a full server refuses at once
            task_request = await run_in_threadpool(prepare)
            result = await until_disconnect(request, service.run(task_request,
                                                                  GenerationOptions(num_beams, max_new_tokens)))
        except InputError as error:
            raise ApiError(400, _api_wording(str(error)), "invalid_task_input") from None
        except QueueFull as error:
            raise ApiError(503, str(error), "queue_full", {"Retry-After": str(error.retry_after)}) from None
        except BatcherClosed as error:
            raise ApiError(503, str(error), "shutting_down", {"Retry-After": "5"}) from None
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        [record] = results_to_json([result])
        record.pop("image", None)
        answer = {"id": f"f2-{uuid.uuid4().hex[:16]}", "object": "florence2.task", "created": int(time.time()),
                  "model": service.name, **record, "seconds": round(time.monotonic() - started, 4)}
        if body.draw:
            answer["drawing"] = await run_in_threadpool(_png_data_url, task_request.image, result)
        return answer

    add_chat_routes(app, chat, require_key)
    return app
