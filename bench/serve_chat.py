"""`florence-vl serve` chat under load: dynamic batching vs one request at a time, same load, same model.

Starts the real server twice as a subprocess on 127.0.0.1 (a free port), with a Florence-VL chat model:
once with dynamic batching (--batch-size 8 --batch-window-ms 10), once one at a time (--batch-size 1
--batch-window-ms 0). Each time N concurrent clients (asyncio + httpx) send POST /v1/chat/completions back
to back for T seconds after a warm-up: an image and a question, greedy, max_tokens M;
half of the clients stream (SSE, read to [DONE]), half do not. Every request generates exactly M tokens
(logit_bias bans the end tokens), so both modes do the same work. The images are 1,024 distinct pictures
used in turn, more than FlorenceVL's feature cache holds (32), so every request pays its vision tower, as
with new images from real users (--repeat-images 8: eight images over and over, the cache's best case).
Printed per mode: requests, failures,
throughput (requests/s and tokens/s), p50/p99 latency, p50 time to first token of the streams, the mean
batch the server formed; then the throughput ratio batched / one-at-a-time.

The model is a random Florence-VL of --preset geometry (nano: Florence-2-nano + the nano LLM, as the
shipped Florence-VL-nano will be) unless --vl-model names a checkpoint (e.g. models/nano/florence-vl).

    .venv/bin/python bench/serve_chat.py                         # nano geometry, 8 clients, 60 s per mode
    .venv/bin/python bench/serve_chat.py --seconds 5             # a smoke run
    .venv/bin/python bench/serve_chat.py --vl-model models/nano/florence-vl --json chat-bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import MODES, pictures, quantile, serve_subprocess, stop_on_sigterm, tiny_models  # noqa: E402

QUESTIONS = ["How many shapes are there?", "What color is the circle?", "Describe the image in detail.",
             "Is there a red circle?"]


def server_options(florence2: str, vl: str, mode: str, args) -> list[str]:
    return ["--model", florence2, "--vl-model", vl, "--beams", "1", "--max-new-tokens", str(max(args.max_tokens, 8)),
            "--max-queue", "256", *MODES[mode]]


def end_token_bias(vl_dir: str) -> dict[str, int]:
    """logit_bias banning the tokens that end an answer (EOS and the chat template's end marker)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(vl_dir) / "llm"))
    ends = {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|eot_id|>")}
    return {str(t): -100 for t in ends if isinstance(t, int) and t >= 0 and t != tok.unk_token_id}


async def one_request(http: httpx.AsyncClient, url: str, body: dict) -> tuple[bool, str, float | None, int]:
    """(ok, reason, seconds to the first streamed text or None, completion tokens)."""
    started = time.monotonic()
    if not body["stream"]:
        response = await http.post(url, json=body)
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}: {response.text[:200]}", None, 0
        return True, "", None, response.json()["usage"]["completion_tokens"]
    first, tokens, done = None, 0, False
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return False, f"HTTP {response.status_code}: {(await response.aread())[:200]!r}", None, 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                return False, f"stream error: {event['error']}", None, 0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = time.monotonic() - started
    return (done, "" if done else "stream ended without [DONE]", first, tokens)


async def load(url: str, clients: int, seconds: float, warmup: float, images: list[str], bias: dict,
               args) -> dict:
    latencies, first_tokens, failures, done, tokens = [], [], [], 0, 0
    stop_at = time.monotonic() + warmup + seconds
    measure_from = time.monotonic() + warmup

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal done, tokens
        i = k
        while time.monotonic() < stop_at:
            body = {"messages": [{"role": "user", "content": [
                        {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
                        {"type": "image_url", "image_url": {"url": images[i % len(images)]}}]}],
                    "max_tokens": args.max_tokens, "temperature": 0, "logit_bias": bias, "stream": k % 2 == 1,
                    "stream_options": {"include_usage": True}}
            started = time.monotonic()
            try:
                ok, reason, first, used = await one_request(http, url + "/v1/chat/completions", body)
            except httpx.HTTPError as error:
                ok, reason, first, used = False, repr(error), None, 0
            if started >= measure_from:
                if ok:
                    latencies.append(time.monotonic() - started)
                    done += 1
                    tokens += used
                    if first is not None:
                        first_tokens.append(first)
                else:
                    failures.append(reason)
            i += clients

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        before = (await http.get(url + "/health")).json()["chat"]["batching"]
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        after = (await http.get(url + "/health")).json()["chat"]["batching"]

    def pick(values, q):
        return quantile(values, q) * 1000

    batches = after["batches"] - before["batches"]
    return {"requests": done, "failed": len(failures), "first_failure": failures[0] if failures else None,
            "throughput": done / seconds, "tokens_per_s": tokens / seconds, "p50_ms": pick(latencies, 0.50),
            "p99_ms": pick(latencies, 0.99), "ttft_p50_ms": pick(first_tokens, 0.50),
            "mean_batch": (after["items"] - before["items"]) / batches if batches else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vl-model", help="Florence-VL checkpoint (default: a random one of --preset geometry)")
    parser.add_argument("--preset", default="nano", choices=["tiny", "nano"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per mode (default: 60)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens each answer generates (default: 16)")
    parser.add_argument("--repeat-images", type=int, default=1024,
                        help="distinct images used in turn (default: 1024, beyond the feature cache)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    args = parser.parse_args()
    stop_on_sigterm()

    with tempfile.TemporaryDirectory() as tmp:
        if args.vl_model:
            florence2, vl = tiny_models(Path(tmp))[0], args.vl_model  # (the task API's model, unused here)
        else:
            florence2, vl = tiny_models(Path(tmp), "tiny", args.preset)
        bias, images = end_token_bias(vl), pictures(args.repeat_images)
        load_before = os.getloadavg()
        results = {}
        for mode in MODES:
            with serve_subprocess(server_options(florence2, vl, mode, args), ready_s=300) as (_, url):
                results[mode] = asyncio.run(load(url, args.clients, args.seconds, args.warmup, images, bias, args))
            r = results[mode]
            print(f"{mode:>14}: {r['requests']:5d} requests, {r['failed']} failed, {r['throughput']:6.2f} req/s, "
                  f"{r['tokens_per_s']:7.1f} tokens/s, p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, "
                  f"first token p50 {r['ttft_p50_ms']:7.1f} ms, mean batch {r['mean_batch']:.2f}", flush=True)
            if r["first_failure"]:
                print(f"{'':>16}first failure: {r['first_failure']}")
    ratio = results["batched"]["throughput"] / max(results["one-at-a-time"]["throughput"], 1e-9)
    print(f"serve_chat ({args.vl_model or 'random ' + args.preset}, {args.clients} clients, {args.seconds:g} s per "
          f"mode, max_tokens {args.max_tokens}, {args.repeat_images} distinct images, load average before "
          f"{load_before[0]:.2f}): "
          f"throughput ratio batched / one-at-a-time = {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results, "ratio": ratio,
                                               "load_average_before": load_before}, indent=2) + "\n")


if __name__ == "__main__":
    main()
