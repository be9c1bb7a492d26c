"""What the server benchmarks share (serve_batching.py, serve_chat.py, serve_load.py): pictures as data: URLs,
random tiny checkpoints, a real `florence-vl serve` subprocess on a free port of 127.0.0.1 (started, waited
for, stopped), quantiles.

    with serve_subprocess(["--model", model, "--vl-model", "none", "--batch-size", "8"]) as (server, url):
        httpx.get(url + "/health")
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

# The two servers the batching benches compare: dynamic batching, and one request at a time.
MODES = {"batched": ["--batch-size", "8", "--batch-window-ms", "10"],
         "one-at-a-time": ["--batch-size", "1", "--batch-window-ms", "0"]}


def pictures(n: int, size: tuple[int, int] = (160, 120), grow: tuple[int, int] = (0, 0)) -> list[str]:
    """n different PNG pictures (a red circle and a blue square, placed and coloured by the index) as data:
    URLs; picture i is size + i * grow pixels. Distinct for n up to a few thousand (the chat bench uses more
    images than FlorenceVL's feature cache holds)."""
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        w, h = size[0] + grow[0] * i, size[1] + grow[1] * i
        s = min(w / 160, h / 120)  # the shapes are laid out for 160 x 120
        image = Image.new("RGB", (w, h), (37 * i % 256, 140, 200))
        draw = ImageDraw.Draw(image)
        draw.ellipse([s * (10 + i % 50), s * 10, s * (70 + i % 50), s * 70], fill=(220, 30 + i % 200, 30))
        draw.rectangle([s * 90, s * (30 + i % 40), s * 140, s * 100], fill=(20, 40, 200 - i % 150))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out


def tiny_models(out: Path, florence2_preset: str = "tiny", vl_preset: str | None = None) -> tuple[str, str | None]:
    """A random Florence-2 checkpoint of `florence2_preset` geometry and, with `vl_preset`, a random Florence-VL
    of that geometry (florence_vl/vl/tiny_checkpoint.py); their folders."""
    from florence_vl.florence2.checkpoint import make_tiny_checkpoint

    florence2 = str(make_tiny_checkpoint(out / "florence2", preset=florence2_preset))
    if vl_preset is None:
        return florence2, None
    from florence_vl.vl.tiny_checkpoint import make_tiny_vl_checkpoint

    return florence2, str(make_tiny_vl_checkpoint(out / "florence-vl", preset=vl_preset))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_subprocess(options: list[str], *, launcher: list[str] | None = None, threads: int = 0,
                     ready_s: float = 180, log=None):
    """`florence-vl serve OPTIONS` on 127.0.0.1 and a free port; yields (Popen, url) once GET /health answers,
    stops it with SIGINT (then SIGKILL after 15 s) on the way out. `launcher` replaces `python -m
    florence_vl.cli`; `threads` sets OMP_NUM_THREADS for the server. The server's stderr goes to a file
    (`server_log(popen)` reads it): a pipe nobody reads fills at 64 KB and then blocks the server's next
    write, its whole event loop with it (seen under overload, when it logged warnings)."""
    port = free_port()
    cmd = [*(launcher or [sys.executable, "-m", "florence_vl.cli"]), "serve", *options, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    log_file = tempfile.NamedTemporaryFile("w+", prefix="serve-", suffix=".log")
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
    server.log_file = log_file
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: {server_log(server).strip()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in {ready_s:g} s")
            time.sleep(0.2)
        if log is not None:
            log(f"server pid {server.pid} on {url}")
        yield server, url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log_file.close()


def server_log(server: subprocess.Popen) -> str:
    """What a serve_subprocess server wrote on stderr so far."""
    with open(server.log_file.name, errors="replace") as f:
        return f.read()


def quantile(values, q: float) -> float:
    """The q-quantile (nearest rank below) of `values`; nan when there are none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stop_on_sigterm() -> None:
    """SIGTERM exits through `finally`, so a server subprocess is stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
