"""Awaiting a request's work while watching for the client to leave (tasks and chat share it)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def until_disconnect(request: Request, work) -> Any:
    """Await `work`; if the client disconnects first, cancel it (its queue slot is freed) and raise ClientGone."""
    task = asyncio.ensure_future(work)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()
