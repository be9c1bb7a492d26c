"""`florence-vl serve`: its options, and starting uvicorn on a loaded model.

The parser part imports nothing heavy, so `florence-vl --help` stays fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..errors import InputError

LOOPBACK_HOSTS = {"localhost"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("FLORENCE_VL_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $FLORENCE_VL_API_KEY; none)")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="let requests name local image files under DIR (repeatable; default: no local paths)")
    p.add_argument("--model-name", help="the id /v1/models shows (default: florence-2)")
    p.add_argument("--vl-model", metavar="DIR_OR_ID",
                   help="Florence-VL checkpoint for POST /v1/chat/completions (default: the shipped nano Florence-VL "
                   "when models/nano/florence-vl exists, else no chat model; 'none': no chat model)")
    p.add_argument("--vl-model-name", default="florence-vl", help="the chat model's id (default: florence-vl)")
    p.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="limit on a chat prompt in tokens, the image's included (default: 4096)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long the first waiting request waits for others to batch with (default: 10)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="waiting requests before the server answers 503 + Retry-After (default: 64)")
    p.add_argument("--max-active", type=int, default=None, metavar="N",
                   help="requests with a body in the server at once (read, decoded, queued, running, streamed); "
                   "beyond it 503 + Retry-After before the body is read (default: 2 x (max-queue + batch-size))")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="request body limit in MiB (default: 20)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S",
                   help="a request's whole body must arrive within S seconds of its headers, else 408 and the "
                   "connection is closed (slow or stalled uploads; default: 30)")
    p.add_argument("--header-timeout", type=float, default=30.0, metavar="S",
                   help="a request's headers must arrive within S seconds of the connection or of their first byte, "
                   "else 408 and the connection is closed (default: 30)")
    p.add_argument("--max-image-pixels", type=int, default=16 * 1024 * 1024,
                   help="width x height limit of a request's image (default: 16777216)")
    p.add_argument("--max-prompt-chars", type=int, default=1000, help="limit on a task's text (default: 1000)")
    p.add_argument("--max-beams", type=int, default=5, help="largest num_beams a request may ask for (default: 5)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def settings_from_args(args):
    from .settings import ServeSettings

    for d in args.allow_dir:
        if not Path(d).is_dir():
            raise InputError(f"--allow-dir {d} is not a directory")
    if not 0 < args.port < 65536:
        raise InputError("--port must be between 1 and 65535")
    if args.beams > args.max_beams:
        raise InputError(f"--beams {args.beams} is over --max-beams {args.max_beams}")
    try:
        return ServeSettings(
            api_key=args.api_key or None, allow_dirs=tuple(args.allow_dir),
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), body_timeout_s=args.body_timeout,
            header_timeout_s=args.header_timeout,
            max_image_pixels=args.max_image_pixels,
            max_prompt_chars=args.max_prompt_chars, max_new_tokens=args.max_new_tokens, max_beams=args.max_beams,
            default_beams=args.beams, max_batch_size=args.batch_size, batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue, max_active=args.max_active, model_name=args.model_name or "florence-2",
            max_prompt_tokens=args.max_prompt_tokens, chat_model_name=args.vl_model_name)
    except ValueError as error:
        raise InputError(str(error).replace("_", "-")) from None


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as error:
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port") from None


def build_app(florence, settings, vl=None):
    """The app over a Florence-2 model and, when `vl` (a FlorenceVL) is given, its chat service."""
    from .app import create_app
    from .chat_service import ChatService
    from .florence2_service import Florence2Service

    service = Florence2Service(florence, name=settings.model_name, max_batch_size=settings.max_batch_size,
                               window_s=settings.batch_window_ms / 1000, max_queue=settings.max_queue)
    chat = ChatService(vl, name=settings.chat_model_name, settings=settings) if vl is not None else None
    return create_app(service, settings, chat)


def chat_model_source(args) -> str | None:
    """What --vl-model asks for: a checkpoint, or None (no chat model). Unset: the shipped nano Florence-VL
    if this checkout has it."""
    from ..models import NANO_DIRS, NANO_ROOT

    if args.vl_model is None:
        nano = NANO_ROOT / NANO_DIRS["florence_vl"]
        return "nano" if (nano / "florence_vl.json").exists() or (nano / "config.json").exists() else None
    return None if args.vl_model.lower() == "none" else args.vl_model


def serve(args, load_model, load_vl=None) -> int:
    """Check the options, load the models (`load_model(args)`, `load_vl(args, source)` for the chat model),
    then serve until interrupted."""
    import uvicorn

    settings = settings_from_args(args)
    _check_port_free(args.host, args.port)
    if not _is_loopback(args.host) and settings.api_key is None:
        print(f"warning: listening on {args.host} with no --api-key: anyone who can reach this port can use it",
              file=sys.stderr)
    source = chat_model_source(args) if load_vl is not None else None
    florence = load_model(args)
    vl = load_vl(args, source) if source is not None else None
    app = build_app(florence, settings, vl)
    chat = f", chat {settings.chat_model_name} ({source})" if vl is not None else \
        " (no chat model: --vl-model DIR_OR_ID enables POST /v1/chat/completions)"
    print(f"serving {settings.model_name}{chat} on http://{args.host}:{args.port}/ (batch up to "
          f"{settings.max_batch_size}, window {settings.batch_window_ms:g} ms)", file=sys.stderr)
    from .protocol import json_error_protocol

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                http=json_error_protocol(settings.header_timeout_s))
    return 0


class BackgroundServer:
    """Run an app with uvicorn on a thread, on a free port of 127.0.0.1 (tests, notebooks, benchmarks).

    >>> with BackgroundServer(build_app(florence, settings)) as server:
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        from .protocol import json_error_protocol

        settings = getattr(getattr(app, "state", None), "settings", None)
        protocol = json_error_protocol(settings.header_timeout_s) if settings is not None else json_error_protocol()
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2,
                                                    http=protocol))
        self._thread = None

    def __enter__(self) -> "BackgroundServer":
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
