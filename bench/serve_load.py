"""`florence-vl serve` past its capacity: bounded queues, 503 + Retry-After, nothing lost, bounded memory, recovery.

Starts the real server (`python -m florence_vl.cli serve`, a subprocess on 127.0.0.1, a free port) on random
tiny checkpoints written here (a Florence-2 of `scripts/make_tiny_checkpoint.py`, and a Florence-VL over it
for POST /v1/chat/completions) unless --model / --vl-model name others. Then:

1. capacity: `--clients` closed-loop clients send the request mix back to back for `--capacity-seconds`;
   answered requests per second is the capacity;
2. overload: an open loop sends the same mix at `--factor` x capacity for `--seconds` (arrivals on a fixed
   schedule, whatever the answers), with a share of streaming chat clients that leave after the first event;
3. drain: every request still in flight gets its answer (or counts as lost);
4. recovery: a normal task request and a normal chat request, repeated until each is answered.

Meanwhile the server's RSS (/proc/PID/status) and GET /health (queue depths, counters) are sampled every
0.5 s. A request counts as accepted unless it is answered 429/503; every accepted request must come back
200 with its whole answer (JSON with the task's result; a chat completion; a stream ending in
finish_reason and [DONE]); anything else (a timeout, a reset, another status, a cut answer) is lost.
Every address is 127.0.0.1; request loops are bounded in count and in time.

    .venv/bin/python bench/serve_load.py                       # 4x capacity for 60 s, ~2 min in all
    .venv/bin/python bench/serve_load.py --seconds 8 --json out/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import pictures, quantile, server_log, serve_subprocess, stop_on_sigterm, tiny_models  # noqa: E402

TASKS = [("OD", None), ("CAPTION", None), ("CAPTION_TO_PHRASE_GROUNDING", "a red circle"), ("OCR", None)]
# Idle connections are dropped by the client well before uvicorn's 5 s keep-alive timeout: with the server's
# event loop lagging under overload, a request sent on a connection the server is just closing for idleness
# fails with ReadError before the server ever reads it (seen at 5 s; no server-side loss).
KEEPALIVE_S = 1.0
# Open requests are spread over connection pools of this many connections each: httpcore's pool does work
# proportional to its connections x its waiting requests on every request, so one pool of thousands of
# connections makes the client, not the server, the bottleneck.
POOL_CONNECTIONS = 32
QUESTIONS = ["What is in the image?", "How many shapes are there?", "Describe the image.", "Is there a red circle?"]


# -- the server -------------------------------------------------------------------------------------------


def server_options(model: str, vl_model: str | None, args) -> list[str]:
    return ["--model", model, "--vl-model", vl_model or "none", "--max-queue", str(args.max_queue),
            "--batch-size", str(args.batch_size), "--batch-window-ms", str(args.batch_window_ms), "--beams", "1",
            "--max-new-tokens", str(args.max_new_tokens)]


def launcher(args) -> list[str] | None:
    if not args.switch_interval_ms:
        return None
    # an experiment: how much the GIL hand-over between the model's thread and the event loop costs
    return [sys.executable, "-c", f"import sys; sys.setswitchinterval({args.switch_interval_ms / 1000}); "
            "from florence_vl.cli import main; sys.exit(main(sys.argv[1:]))"]


def raise_open_files(wanted: int) -> int:
    """Raise this process's (and so the server subprocess's) limit on open files towards `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- requests ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str            # task, chat, stream, leave
    status: int | None   # None: no HTTP answer (transport error, timeout)
    full: bool           # a 200 with its whole answer
    seconds: float
    retry_after: int | None = None
    code: str | None = None  # the error code of a refusal: queue_full (a model's queue), server_busy (--max-active)
    error: str | None = None
    left: bool = False   # a leaving client did leave mid-stream


class Mix:
    """Request i of the mix: tasks, and (with a chat model) whole, streamed and leaving chat requests."""

    def __init__(self, chat: bool, chat_share: float, leave_share: float, max_new_tokens: int):
        self.images = pictures(4, size=(96, 72), grow=(8, 4))
        self.chat, self.chat_share, self.leave_share, self.tokens = chat, chat_share, leave_share, max_new_tokens

    def kind(self, i: int, leavers: bool) -> str:
        if not self.chat or (i * 0.618034) % 1 >= self.chat_share:  # a well-spread deterministic sequence
            return "task"
        if leavers and (i * 0.7548776) % 1 < self.leave_share:
            return "leave"
        return "stream" if i % 2 else "chat"

    def body(self, kind: str, i: int) -> tuple[str, dict]:
        image = self.images[i % len(self.images)]
        if kind == "task":
            task, text = TASKS[i % len(TASKS)]
            return "/v1/florence2/tasks", {"image": image, "task": task, "text": text, "num_beams": 1,
                                           "max_new_tokens": self.tokens}
        content = [{"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
                   {"type": "image_url", "image_url": {"url": image}}]
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": content}],
                                        "max_tokens": self.tokens, "stream": kind != "chat"}


def _retry_after(response) -> int | None:
    value = response.headers.get("retry-after")
    return int(value) if value is not None and value.isdigit() else None


def _refusal(kind: str, response, seconds: float) -> Outcome:
    """An answer other than 200."""
    code = None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        pass
    return Outcome(kind, response.status_code, False, seconds, _retry_after(response), code,
                   None if response.status_code in (429, 503) else response.text[:200])


async def send(http: httpx.AsyncClient, url: str, mix: Mix, kind: str, i: int) -> Outcome:
    path, body = mix.body(kind, i)
    started = time.monotonic()
    took = lambda: time.monotonic() - started  # noqa: E731
    try:
        if kind in ("task", "chat"):
            response = await http.post(url + path, json=body)
            if response.status_code != 200:
                return _refusal(kind, response, took())
            answer = response.json()
            full = (body["task"] in str(answer.get("task")) and isinstance(answer.get("text"), str)
                    and isinstance(answer.get("result"), dict)) if kind == "task" else \
                (answer["object"] == "chat.completion" and isinstance(answer["choices"][0]["message"]["content"], str)
                 and answer["choices"][0]["finish_reason"] in ("stop", "length"))
            return Outcome(kind, 200, full, took(), error=None if full else f"cut answer: {response.text[:200]}")
        async with http.stream("POST", url + path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return _refusal(kind, response, took())
            events = []
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if kind == "leave" and len(events) >= 1:  # leave after the first event, mid-stream
                        return Outcome(kind, 200, True, took(), left=True)
        chunks = [json.loads(e) for e in events[:-1]] if events else []
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        full = bool(events) and events[-1] == "[DONE]" and not any("error" in c for c in chunks) \
            and bool(finishes) and finishes[-1] in ("stop", "length")
        return Outcome(kind, 200, full, took(), error=None if full else f"cut stream: {events[-3:]}")
    except (httpx.HTTPError, ValueError, KeyError) as error:
        return Outcome(kind, None, False, took(), error=repr(error)[:200])


# -- the phases -------------------------------------------------------------------------------------------


async def closed_loop(url: str, mix: Mix, clients: int, seconds: float) -> list[Outcome]:
    stop_at = time.monotonic() + seconds
    outcomes: list[Outcome] = []

    async def client(k: int, http):
        i = k
        while time.monotonic() < stop_at:
            outcomes.append(await send(http, url, mix, mix.kind(i, leavers=False), i))
            i += clients

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients,
                                                                  keepalive_expiry=KEEPALIVE_S)) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return outcomes


class Sampler:
    """RSS and /health every `every` seconds, on the event loop, until stopped."""

    def __init__(self, url: str, pid: int, every: float = 0.5):
        self.url, self.pid, self.every = url, pid, every
        self.samples: list[dict] = []
        self.health_failures = 0
        self.slowest_health = 0.0
        self.t0 = time.monotonic()

    async def run(self, stop: asyncio.Event):
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S)) as http:
            while not stop.is_set():
                started = time.monotonic()
                sample = {"t": round(started - self.t0, 2), "rss_mb": round(rss_mb(self.pid), 1)}
                try:
                    health = (await http.get(self.url + "/health")).json()
                    sample["waiting"] = health["queue"]["waiting"]
                    sample["active"] = health["admission"]["active"]
                    sample["running"] = health["queue"]["running"]
                    if health.get("chat"):
                        sample["chat_waiting"] = health["chat"]["queue"]["waiting"]
                        sample["chat_running"] = health["chat"]["queue"]["running"]
                except (httpx.HTTPError, ValueError, KeyError):
                    self.health_failures += 1
                self.slowest_health = max(self.slowest_health, time.monotonic() - started)
                self.samples.append(sample)
                try:
                    await asyncio.wait_for(stop.wait(), self.every)
                except TimeoutError:
                    pass


async def open_loop(url: str, mix: Mix, rate: float, seconds: float, max_inflight: int, drain_s: float):
    """Arrivals at `rate` per second for `seconds` on a fixed schedule, whatever the answers (each on its own
    task, over pools of POOL_CONNECTIONS connections); then wait for every one. How late the sends were
    against the schedule says whether this client kept up."""
    outcomes: list[Outcome] = []
    inflight: set[asyncio.Task] = set()
    skipped, lags, most_inflight = 0, [], 0
    limits = httpx.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS,
                          keepalive_expiry=KEEPALIVE_S)
    pools = [httpx.AsyncClient(timeout=120, limits=limits) for _ in range(math.ceil(max_inflight / POOL_CONNECTIONS))]
    try:
        start = time.monotonic()
        for i in range(int(rate * seconds) + 1):  # bounded in count ...
            at = start + i / rate
            if at > start + seconds:  # ... and in time
                break
            if (delay := at - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            lags.append(time.monotonic() - at)
            if len(inflight) >= max_inflight:
                skipped += 1
                continue
            kind = mix.kind(i, leavers=True)
            task = asyncio.create_task(send(pools[i % len(pools)], url, mix, kind, i))
            inflight.add(task)
            most_inflight = max(most_inflight, len(inflight))
            task.add_done_callback(lambda t, kind=kind, sent=time.monotonic(): (inflight.discard(t), outcomes.append(
                Outcome(kind, None, False, time.monotonic() - sent, error="no answer before the drain limit")
                if t.cancelled() else t.result())))
        load_end = time.monotonic()
        sent_for = load_end - start
        if inflight:
            await asyncio.wait(set(inflight), timeout=drain_s)
        unfinished = len(inflight)
        for task in list(inflight):  # counted as lost (accepted or not, no answer came)
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
    finally:
        await asyncio.gather(*(pool.aclose() for pool in pools), return_exceptions=True)
    return outcomes, {"sent_for_s": sent_for, "skipped": skipped, "unfinished": unfinished,
                      "drained_s": time.monotonic() - load_end, "most_inflight": most_inflight, "pools": len(pools),
                      "send_lag_p50_s": round(quantile(lags, 0.5), 4), "send_lag_p99_s": round(quantile(lags, 0.99), 4),
                      "send_lag_max_s": round(max(lags, default=0.0), 4)}, load_end


async def recover(url: str, mix: Mix, load_end: float, chat: bool, limit_s: float = 30.0) -> dict:
    """Until a normal request of each kind is answered in full: how long after the load that was."""
    out = {}
    async with httpx.AsyncClient(timeout=60) as http:
        for kind in ("task", "chat") if chat else ("task",):
            deadline = time.monotonic() + limit_s
            tries = 0
            while True:
                tries += 1
                outcome = await send(http, url, mix, kind, tries)
                if outcome.full or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            out[kind] = {"ok": outcome.full, "after_load_s": round(time.monotonic() - load_end, 3),
                         "latency_s": round(outcome.seconds, 3), "tries": tries}
    return out


def summarize(outcomes: list[Outcome]) -> dict:
    accepted = [o for o in outcomes if o.status not in (429, 503)]
    rejected = [o for o in outcomes if o.status in (429, 503)]
    lost = [o for o in accepted if not o.full]
    ok = [o.seconds for o in accepted if o.full and not o.left]
    by_kind = {}
    for kind in sorted({o.kind for o in outcomes}):
        mine = [o for o in outcomes if o.kind == kind]
        by_kind[kind] = {"sent": len(mine), "accepted": sum(o.status not in (429, 503) for o in mine),
                         "rejected": sum(o.status in (429, 503) for o in mine),
                         "lost": sum(o.status not in (429, 503) and not o.full for o in mine)}
    return {"requests": len(outcomes), "accepted": len(accepted), "rejected": len(rejected),
            "rejected_429": sum(o.status == 429 for o in rejected), "rejected_503": sum(o.status == 503 for o in rejected),
            "rejected_without_retry_after": sum(o.retry_after is None or o.retry_after < 1 for o in rejected),
            "rejected_by_code": {c: sum(o.code == c for o in rejected) for c in sorted({str(o.code) for o in rejected})},
            "retry_after_range": [min((o.retry_after or 0) for o in rejected), max((o.retry_after or 0) for o in
                                                                                   rejected)] if rejected else None,
            "lost": len(lost), "lost_examples": [asdict(o) for o in lost[:5]],
            "left_mid_stream": sum(o.left for o in outcomes),
            "p50_s": round(quantile(ok, 0.5), 4), "p99_s": round(quantile(ok, 0.99), 4),
            "max_s": round(max(ok), 4) if ok else None,
            "rejection_p50_s": round(quantile([o.seconds for o in rejected], 0.5), 4),
            "rejection_p99_s": round(quantile([o.seconds for o in rejected], 0.99), 4),
            "rejection_max_s": round(max((o.seconds for o in rejected), default=float("nan")), 4), "by_kind": by_kind}


def run_load(args, log=print) -> dict:
    """The four phases against a fresh server; the numbers as a dict."""
    open_files = raise_open_files(2 * args.max_inflight + 1024)  # both ends of every open request, and some
    with tempfile.TemporaryDirectory() as tmp:
        model, vl_model = args.model, args.vl_model
        chat = args.chat_share > 0 and vl_model != "none"
        if model is None:
            model, made_vl = tiny_models(Path(tmp), "tiny", "tiny" if chat and vl_model is None else None)
            vl_model = vl_model or made_vl
        mix = Mix(chat, args.chat_share, args.leave_share, args.max_new_tokens)
        with serve_subprocess(server_options(model, vl_model if chat else None, args), launcher=launcher(args),
                              threads=args.server_threads, log=log) as (server, url):
            result = asyncio.run(_phases(url, server.pid, mix, chat, args, log))
            lines = server_log(server).splitlines()
    # What the server logged (at --log-level warning): no tracebacks and no leaked tasks expected.
    result["server_log"] = {"lines": len(lines), "tracebacks": sum(line.startswith("Traceback") for line in lines),
                            "destroyed_pending_tasks": sum("Task was destroyed but it is pending" in line
                                                           for line in lines),
                            "errors": sum(line.startswith("ERROR") for line in lines), "first": lines[:5]}
    result["machine"]["open_files_limit"] = open_files
    return result


async def _phases(url: str, pid: int, mix: Mix, chat: bool, args, log) -> dict:
    warm = await closed_loop(url, mix, 2, args.warmup)
    capacity_outcomes = await closed_loop(url, mix, args.clients, args.capacity_seconds)
    done = [o for o in capacity_outcomes if o.full]
    capacity = len(done) / args.capacity_seconds
    if not done or any(not o.full for o in warm + capacity_outcomes):
        raise RuntimeError(f"the server failed below capacity: {summarize(warm + capacity_outcomes)}")
    rate = args.factor * capacity
    log(f"capacity {capacity:.1f} req/s ({len(done)} answers in {args.capacity_seconds:g} s, {args.clients} clients); "
        f"overload at {args.factor:g}x = {rate:.1f} req/s for {args.seconds:g} s")
    async with httpx.AsyncClient(timeout=10) as http:
        before = (await http.get(url + "/health")).json()
    sampler = Sampler(url, pid)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    rss_start = rss_mb(pid)
    cpu_start, own_start, wall_start, load_start = cpu_s(pid), time.process_time(), time.monotonic(), os.getloadavg()[0]
    outcomes, loop_info, load_end = await open_loop(url, mix, rate, args.seconds, args.max_inflight, args.drain_seconds)
    wall = time.monotonic() - wall_start
    machine = {"cpus": os.cpu_count(), "loadavg_1min_before": round(load_start, 2),
               "loadavg_1min_after": round(os.getloadavg()[0], 2),
               "server_cores": round((cpu_s(pid) - cpu_start) / wall, 2),  # CPU the server got during load + drain
               "bench_cores": round((time.process_time() - own_start) / wall, 2)}
    recovery = await recover(url, mix, load_end, chat)
    await asyncio.sleep(0.6)  # one more sample, after the load
    stop.set()
    await sampling
    async with httpx.AsyncClient(timeout=10) as http:
        after = (await http.get(url + "/health")).json()
    rss = [s["rss_mb"] for s in sampler.samples]
    queue_max = {"waiting": max((s.get("waiting", 0) for s in sampler.samples), default=0),
                 "chat_waiting": max((s.get("chat_waiting", 0) for s in sampler.samples), default=0),
                 "max_queue": args.max_queue, "active": max((s.get("active", 0) for s in sampler.samples), default=0),
                 "max_active": after["admission"]["max"]}
    tasks = [o for o in outcomes if o.kind == "task"]
    server = {"task_items": after["batching"]["items"] - before["batching"]["items"],
              "task_rejected": after["batching"]["rejected"] - before["batching"]["rejected"],
              "admission_refused": after["admission"]["refused"] - before["admission"]["refused"],
              "client_task_full": sum(o.full for o in tasks),
              "client_task_queue_full": sum(o.code == "queue_full" for o in tasks),
              "client_server_busy": sum(o.code == "server_busy" for o in outcomes),
              "recovery": {k: v["tries"] for k, v in recovery.items()},
              "after": {"queue": after["queue"], "admission": after["admission"]}}
    if chat:
        server["chat_cancelled"] = after["chat"]["cancelled"] - before["chat"]["cancelled"]
        server["chat_rejected"] = after["chat"]["batching"]["rejected"] - before["chat"]["batching"]["rejected"]
        server["after"]["chat_queue"] = after["chat"]["queue"]
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"}, "capacity_rps": round(capacity, 2),
              "offered_rps": round(len(outcomes) / loop_info["sent_for_s"], 2), "target_rps": round(rate, 2),
              "offered_factor": round(len(outcomes) / loop_info["sent_for_s"] / capacity, 2),
              "overload": summarize(outcomes), "loop": loop_info, "queue_max": queue_max, "server": server,
              "rss_mb": {"start": round(rss_start, 1), "max": max(rss), "end": rss[-1],
                         "growth": round(rss[-1] - rss_start, 1), "max_growth": round(max(rss) - rss_start, 1)},
              "rss_series": sampler.samples[:: max(1, len(sampler.samples) // 60)],
              "health": {"failures": sampler.health_failures, "slowest_s": round(sampler.slowest_health, 3)},
              "recovery": recovery, "machine": machine}
    return result


def report(r: dict) -> str:
    o = r["overload"]
    lines = [
        f"capacity {r['capacity_rps']} req/s; offered {r['offered_rps']} req/s = {r['offered_factor']}x capacity "
        f"(target {r['target_rps']}) for {r['settings']['seconds']:g} s; sends late by p50/p99/max "
        f"{r['loop']['send_lag_p50_s']}/{r['loop']['send_lag_p99_s']}/{r['loop']['send_lag_max_s']} s; most open "
        f"requests {r['loop']['most_inflight']} (bound {r['settings']['max_inflight']}, skipped {r['loop']['skipped']})",
        f"requests {o['requests']}: accepted {o['accepted']}, rejected {o['rejected']} (503 {o['rejected_503']}, "
        f"429 {o['rejected_429']}; {o['rejected_by_code']}; without Retry-After {o['rejected_without_retry_after']}, "
        f"Retry-After "
        f"{o['retry_after_range']}), lost {o['lost']}, left mid-stream {o['left_mid_stream']}",
        f"accepted latency p50 {o['p50_s']} s, p99 {o['p99_s']} s, max {o['max_s']} s; rejections p50 "
        f"{o['rejection_p50_s']} s, p99 {o['rejection_p99_s']} s, max {o['rejection_max_s']} s",
        f"queue max waiting {r['queue_max']['waiting']} (chat {r['queue_max']['chat_waiting']}) of "
        f"{r['queue_max']['max_queue']}; most active {r['queue_max']['active']} of {r['queue_max']['max_active']}; "
        f"/health failures {r['health']['failures']}, slowest {r['health']['slowest_s']} s",
        f"server RSS {r['rss_mb']['start']} MB at the start of the load, max {r['rss_mb']['max']} MB, end "
        f"{r['rss_mb']['end']} MB (growth {r['rss_mb']['growth']} MB, max growth {r['rss_mb']['max_growth']} MB)",
        f"recovery: {json.dumps(r['recovery'])}",
        f"machine: {json.dumps(r['machine'])}",
        f"server log: {json.dumps(r['server_log'])}",
        f"by kind: {json.dumps(o['by_kind'])}; server counters: {json.dumps(r['server'])}"]
    if o["lost_examples"]:
        lines.append(f"first lost: {o['lost_examples'][0]}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Florence-2 checkpoint (default: a random tiny one)")
    p.add_argument("--vl-model", help="Florence-VL checkpoint for chat ('none': tasks only; default: a random tiny one)")
    p.add_argument("--seconds", type=float, default=60.0, help="overload duration (default: 60)")
    p.add_argument("--factor", type=float, default=4.0, help="offered load / measured capacity (default: 4)")
    p.add_argument("--capacity-seconds", type=float, default=8.0, help="capacity measurement (default: 8)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients measuring capacity (default: 16)")
    p.add_argument("--max-queue", type=int, default=32, help="the server's --max-queue (default: 32)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-window-ms", type=float, default=10.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--chat-share", type=float, default=0.3, help="share of chat requests (default: 0.3; 0: tasks only)")
    p.add_argument("--leave-share", type=float, default=0.3,
                   help="share of the chat requests that stream and leave after the first event (default: 0.3)")
    p.add_argument("--max-inflight", type=int, default=4096,
                   help="client-side bound on open requests; arrivals past it are skipped and counted (default: 4096)")
    p.add_argument("--drain-seconds", type=float, default=60.0, help="how long in-flight requests may take (default: 60)")
    p.add_argument("--server-threads", type=int, default=0, help="OMP_NUM_THREADS for the server (default: unset)")
    p.add_argument("--switch-interval-ms", type=float, default=0,
                   help="sys.setswitchinterval for the server, in ms (default: Python's 5 ms)")
    p.add_argument("--json", metavar="OUT", help="also write the numbers as JSON")
    return p


def main() -> None:
    args = parser().parse_args()
    stop_on_sigterm()
    result = run_load(args)
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
