"""`florence-vl serve` under load: dynamic batching vs one request at a time, same load, same model.

Starts the real server twice as a subprocess on 127.0.0.1 (a free port): once with dynamic batching
(--batch-size 8 --batch-window-ms 10), once one at a time (--batch-size 1 --batch-window-ms 0). Each time N
concurrent clients (asyncio + httpx) send POST /v1/florence2/tasks back to back for T seconds, after a
short warm-up, and the bench prints per mode: requests done, failures, throughput, p50/p99 latency, the
mean batch size the server formed; then the throughput ratio.

The model is a random Florence-2 checkpoint (scripts/make_tiny_checkpoint.py; --preset tiny or nano
geometry) unless --model names one; random weights stop at random lengths, but greedy decoding makes
every request's work the same in both modes.

    .venv/bin/python bench/serve_batching.py                      # tiny, 8 clients, 8 s per mode, ~50 s in all
    .venv/bin/python bench/serve_batching.py --preset nano --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

MODES = {"batched": ["--batch-size", "8", "--batch-window-ms", "10"],
         "one-at-a-time": ["--batch-size", "1", "--batch-window-ms", "0"]}
TASKS = [("OD", None, None), ("CAPTION", None, None), ("REGION_TO_CATEGORY", None, [10, 10, 120, 90]),
         ("CAPTION_TO_PHRASE_GROUNDING", "a red circle", None)]


def images(n: int) -> list[str]:
    out = []
    for i in range(n):
        image = Image.new("RGB", (160 + 8 * i, 120 + 4 * i), (30 * i % 255, 140, 200))
        draw = ImageDraw.Draw(image)
        draw.ellipse([10 + i, 10, 70 + i, 70], fill=(220, 30, 30))
        draw.rectangle([90, 30 + i, 140, 100], fill=(20, 40, 200))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, mode: str, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "florence_vl.cli", "serve", "--model", model, "--vl-model", "none", "--port", str(port),
           "--beams", str(args.beams), "--max-new-tokens", str(args.max_new_tokens), "--max-queue", "256",
           "--log-level", "warning", *MODES[mode]]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(server: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read().strip()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not start in time")


async def load(url: str, clients: int, seconds: float, warmup: float, pictures: list[str], args) -> dict:
    latencies, failures, done = [], [], 0
    stop_at = time.monotonic() + warmup + seconds
    measure_from = time.monotonic() + warmup

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            task, text, region = TASKS[i % len(TASKS)]
            body = {"image": pictures[i % len(pictures)], "task": task, "text": text, "region": region,
                    "num_beams": args.beams, "max_new_tokens": args.max_new_tokens}
            started = time.monotonic()
            try:
                response = await http.post(url + "/v1/florence2/tasks", json=body)
                ok = response.status_code == 200
                reason = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as error:
                ok, reason = False, repr(error)
            if started >= measure_from:
                if ok:
                    latencies.append(time.monotonic() - started)
                    done += 1
                else:
                    failures.append(reason)
            i += clients

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        before = (await http.get(url + "/health")).json()["batching"]
        t0 = time.monotonic()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.monotonic() - max(t0, measure_from)
        after = (await http.get(url + "/health")).json()["batching"]
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")  # noqa: E731
    batches = after["batches"] - before["batches"]
    return {"requests": done, "failed": len(failures), "first_failure": failures[0] if failures else None,
            "throughput": done / seconds, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "mean_batch": (after["items"] - before["items"]) / batches if batches else 0.0, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: a random one of --preset geometry)")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "nano"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per mode (default: 8)")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server subprocess

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from florence_vl.florence2.checkpoint import make_tiny_checkpoint

            model = str(make_tiny_checkpoint(Path(tmp) / args.preset, preset=args.preset))
        pictures = images(8)
        results = {}
        for mode in MODES:
            port = free_port()
            server = start_server(model, mode, port, args)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_ready(server, url)
                results[mode] = asyncio.run(load(url, args.clients, args.seconds, args.warmup, pictures, args))
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            r = results[mode]
            print(f"{mode:>14}: {r['requests']:5d} requests, {r['failed']} failed, {r['throughput']:7.2f} req/s, "
                  f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, mean batch {r['mean_batch']:.2f}",
                  flush=True)
            if r["first_failure"]:
                print(f"{'':>16}first failure: {r['first_failure']}")
    ratio = results["batched"]["throughput"] / max(results["one-at-a-time"]["throughput"], 1e-9)
    print(f"serve_batching ({args.preset if not args.model else args.model}, {args.clients} clients, "
          f"{args.seconds:g} s, beams {args.beams}, max_new_tokens {args.max_new_tokens}): "
          f"throughput ratio batched / one-at-a-time = {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results, "ratio": ratio},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
