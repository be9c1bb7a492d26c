"""Issue 7, the server past its capacity: the short run of bench/serve_load.py, with assertions.

A real `florence-vl serve` subprocess on 127.0.0.1 (random tiny Florence-2 and Florence-VL checkpoints),
its capacity measured, then an open loop at 4x that for a few seconds: tasks, whole and streamed chat, and
streaming clients that leave after the first event. Bounded queues, 503 + Retry-After for every refusal,
every accepted request answered in full, the server's counters agree with the clients' (what it ran, what
its queues and its --max-active limit refused), the leavers' rows are cancelled and their slots freed, RSS
growth bounded, and the first normal request after the load is answered at once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(bench):
    args = bench.parser().parse_args(["--seconds", "6", "--capacity-seconds", "2.5", "--warmup", "1", "--factor", "4",
                                      "--max-queue", "16", "--clients", "12", "--max-new-tokens", "32",
                                      "--server-threads", "1", "--drain-seconds", "45", "--leave-share", "0.5"])
    result = bench.run_load(args, log=lambda *_: None)
    print("\n" + bench.report(result))  # seen with pytest -s
    return result


def test_past_capacity_the_queue_stays_bounded_and_refusals_say_retry_after(run):
    o = run["overload"]
    # The load really was far past capacity, measured in the same run: the client kept its open-loop schedule
    # (nothing skipped for its in-flight bound) at >= 3x (4x asked; a little is lost to a busy CPU).
    assert run["offered_factor"] >= 3.0 and run["loop"]["skipped"] == 0, (run["offered_factor"], run["loop"])
    assert run["queue_max"]["active"] <= run["queue_max"]["max_active"]
    assert o["rejected"] > 0 and o["rejected_503"] == o["rejected"] and o["rejected_429"] == 0
    assert o["rejected_without_retry_after"] == 0 and o["retry_after_range"][0] >= 1
    assert run["queue_max"]["waiting"] <= 16 and run["queue_max"]["chat_waiting"] <= 16
    assert run["queue_max"]["waiting"] >= 8  # and the queue did fill, so the bound was what held it
    assert run["health"]["failures"] == 0


def test_no_accepted_request_is_lost_and_latency_is_bounded(run):
    o = run["overload"]
    assert o["lost"] == 0, o["lost_examples"]
    assert run["loop"]["unfinished"] == 0  # every request sent got its answer before the drain limit
    assert all(k["accepted"] > 0 for k in o["by_kind"].values()), o["by_kind"]  # every kind got through
    # A bounded queue means a bounded wait: about the requests let in ahead (--max-active) over the capacity.
    assert o["p99_s"] < 3 * run["server"]["after"]["admission"]["max"] / run["capacity_rps"] + 10, o
    s = run["server"]  # the server ran exactly what the clients got back, and refused what they saw refused
    assert s["recovery"] == {"task": 1, "chat": 1}
    assert s["task_items"] == s["client_task_full"] + 1  # + the recovery request
    assert s["task_rejected"] == s["client_task_queue_full"] and s["admission_refused"] == s["client_server_busy"]
    assert set(o["rejected_by_code"]) <= {"queue_full", "server_busy"}


def test_clients_that_leave_mid_stream_free_their_slots(run):
    o, s = run["overload"], run["server"]
    assert o["left_mid_stream"] >= 2
    assert 1 <= s["chat_cancelled"] <= o["left_mid_stream"]  # their rows were stopped (or had just finished)
    assert s["after"]["chat_queue"]["waiting"] == 0 and s["after"]["chat_queue"]["running"] == 0
    assert s["after"]["queue"]["waiting"] == 0 and s["after"]["queue"]["running"] == 0
    assert s["after"]["admission"]["active"] == 0  # nobody's slot is held once the load is gone


def test_the_server_logged_no_error_and_leaked_no_task(run):
    # (a streaming client leaving used to leave its pending Queue.get task behind: "Task was destroyed but it
    # is pending!", and at 4x for 60 s enough of those lines to fill an unread stderr pipe and block the server)
    log = run["server_log"]
    assert log["tracebacks"] == log["destroyed_pending_tasks"] == log["errors"] == 0, log


def test_memory_is_bounded_and_the_server_recovers(run):
    assert run["rss_mb"]["max_growth"] < 150, run["rss_mb"]
    for kind in ("task", "chat"):
        recovery = run["recovery"][kind]
        assert recovery["ok"] and recovery["tries"] == 1 and recovery["latency_s"] < 5, run["recovery"]

