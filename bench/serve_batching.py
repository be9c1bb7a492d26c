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
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import MODES, pictures, quantile, serve_subprocess, stop_on_sigterm, tiny_models  # noqa: E402

TASKS = [("OD", None, None), ("CAPTION", None, None), ("REGION_TO_CATEGORY", None, [10, 10, 120, 90]),
         ("CAPTION_TO_PHRASE_GROUNDING", "a red circle", None)]


def server_options(model: str, mode: str, args) -> list[str]:
    return ["--model", model, "--vl-model", "none", "--beams", str(args.beams), "--max-new-tokens",
            str(args.max_new_tokens), "--max-queue", "256", *MODES[mode]]


async def load(url: str, clients: int, seconds: float, warmup: float, images: list[str], args) -> dict:
    latencies, failures, done = [], [], 0
    stop_at = time.monotonic() + warmup + seconds
    measure_from = time.monotonic() + warmup

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal done
        i = k
        while time.monotonic() < stop_at:
            task, text, region = TASKS[i % len(TASKS)]
            body = {"image": images[i % len(images)], "task": task, "text": text, "region": region,
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
    pick = lambda q: quantile(latencies, q) * 1000  # noqa: E731
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
    stop_on_sigterm()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_models(Path(tmp), args.preset)[0]
        images = pictures(8, grow=(8, 4))
        results = {}
        for mode in MODES:
            with serve_subprocess(server_options(model, mode, args), ready_s=120) as (_, url):
                results[mode] = asyncio.run(load(url, args.clients, args.seconds, args.warmup, images, args))
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
