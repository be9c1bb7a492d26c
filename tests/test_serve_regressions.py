"""Regressions: what tests/test_serve_fuzz.py and tests/test_serve_load.py found, each pinned as an explicit
case (fixed in florence_vl/serve/)."""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

import florence_vl.serve.app as app_module
import florence_vl.serve.chat_service as chat_module
from florence_vl.serve.errors import ApiError
from florence_vl.serve.image_source import decode_image_source
from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_api import GatedFlorence, data_url, picture, wait_for
from test_serve_chat_limits import Gate
from vl_tiny import tiny_vl


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    Image.new("RGB", (8, 6)).save(root / "photo.png")
    (root / "sub").mkdir()
    os.symlink(root / "loop", root / "loop")                 # a link to itself
    os.symlink(root / "sub" / "b", root / "sub" / "a")       # a -> b -> a
    os.symlink(root / "sub" / "a", root / "sub" / "b")
    return root


def refused(value, allowed):
    with pytest.raises(ApiError) as raised:
        decode_image_source(value, allow_dirs=(allowed,), max_pixels=10_000)
    return raised.value


# 1. A path inside the allow-list that the file system cannot look up (a name over NAME_MAX, a symlink loop)
#    ended in an uncaught OSError / RuntimeError: 500 internal_error. Now 400 bad_image, one short line.
@pytest.mark.parametrize("value", ["a" * 5000, "sub/" + "b" * 300 + ".png", "x/" * 3000 + "y.png", "loop",
                                   "loop/x.png", "sub/a", "sub/b/c.png", "file://ROOT/loop"])
def test_paths_the_file_system_cannot_look_up_are_a_400(allowed, value):
    error = refused(value.replace("ROOT", str(allowed)), allowed)
    assert (error.status, error.code) == (400, "bad_image"), error.message
    assert "cannot be read" in error.message and len(error.message) < 250 and "\n" not in error.message


# 2. A path with a newline went back inside the one-line error message ("image not found: a\nb").
@pytest.mark.parametrize("value", ["a\nb.png", "sub/x\r\ny.png", "missing\n.png"])
def test_error_messages_about_paths_stay_on_one_line(allowed, value):
    error = refused(value, allowed)
    assert (error.status, error.code) == (400, "image_not_found") and "\n" not in error.message
    assert "\r" not in error.message


def test_the_good_path_still_reads_and_outside_is_still_403(allowed):
    assert decode_image_source("photo.png", allow_dirs=(allowed,), max_pixels=10_000).size == (8, 6)
    assert refused("../" * 3 + "etc/passwd", allowed).status == 403


# -- found by the load test ---------------------------------------------------------------------------------


# 3. With the queue full, every refused request was still decoded and tokenized first, so refusing cost as
#    much CPU as accepting and, past capacity, the refusals slowed the answers down.
def test_a_full_queue_refuses_before_decoding_the_image(tiny_florence2, monkeypatch):
    """Now the queue is checked before the image is touched (tasks and chat)."""
    decoded = []
    for module in (app_module, chat_module):
        real = module.decode_image_source
        monkeypatch.setattr(module, "decode_image_source",
                            lambda *a, _real=real, **k: decoded.append(1) or _real(*a, **k))
    gated_f2, gated_vl = GatedFlorence(tiny_florence2), Gate(tiny_vl(tiny_florence2))
    task = {"image": data_url(picture()), "task": "OD", "num_beams": 1, "max_new_tokens": 4}
    ask = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                     {"type": "image_url", "image_url": {"url": data_url(picture())}}]}],
           "max_tokens": 4}
    settings = ServeSettings(max_batch_size=1, batch_window_ms=0, max_queue=1, max_new_tokens=8, max_active=16)
    with BackgroundServer(build_app(gated_f2, settings, gated_vl)) as server, ThreadPoolExecutor(4) as pool:
        post = lambda path, body: httpx.post(server.url + path, json=body, timeout=60)  # noqa: E731
        held = [pool.submit(post, "/v1/florence2/tasks", task), pool.submit(post, "/v1/chat/completions", ask)]
        wait_for(server, lambda h: h["queue"]["running"] == 1 and h["chat"]["queue"]["running"] == 1)
        held += [pool.submit(post, "/v1/florence2/tasks", task), pool.submit(post, "/v1/chat/completions", ask)]
        wait_for(server, lambda h: h["queue"]["waiting"] == 1 and h["chat"]["queue"]["waiting"] == 1)
        before = len(decoded)
        for path, body in [("/v1/florence2/tasks", task), ("/v1/chat/completions", ask)] * 3:
            refused = post(path, body)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full", refused.text
            assert int(refused.headers["retry-after"]) >= 1
        assert len(decoded) == before  # refused without decoding an image
        gated_f2.gate.set()
        gated_vl.gate.set()
        assert [f.result().status_code for f in held] == [200] * 4
        health = wait_for(server, lambda h: True)
        assert health["batching"]["rejected"] == 3 and health["chat"]["batching"]["rejected"] == 3


# 4. Nothing bounded the requests inside the server before the queue: every client's body was read into
#    memory and its image decoded before the queue said no. 40 clients sending 7.8 MB bodies at once took
#    the server from 0.45 to 1.6 GB RSS; at the default 20 MB limit a few hundred clients exhaust memory.
#    Now at most --max-active requests with a body are inside; the next is refused before its body is read.
def test_past_max_active_a_request_is_refused_before_its_body_is_read(tiny_florence2):
    gated = GatedFlorence(tiny_florence2)
    task = {"image": data_url(picture()), "task": "OD", "num_beams": 1, "max_new_tokens": 4}
    settings = ServeSettings(max_batch_size=1, batch_window_ms=0, max_queue=1, max_active=3)
    with BackgroundServer(build_app(gated, settings)) as server, ThreadPoolExecutor(2) as pool:
        post = lambda: httpx.post(server.url + "/v1/florence2/tasks", json=task, timeout=60)  # noqa: E731
        held = [pool.submit(post)]
        wait_for(server, lambda h: h["queue"]["running"] == 1)
        held.append(pool.submit(post))
        wait_for(server, lambda h: h["queue"]["waiting"] == 1)
        slow = socket.create_connection((server.host, server.port))  # a client still sending its body
        slow.sendall(b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"ima")
        wait_for(server, lambda h: h["admission"]["active"] == 3)
        with socket.create_connection((server.host, server.port), timeout=5) as big:  # 5 MB announced, none sent
            started = time.monotonic()
            big.sendall(b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
            answer = b""
            while chunk := big.recv(65536):  # the server closes after its answer
                answer += chunk
            assert time.monotonic() - started < 3  # answered without waiting for the body
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower(), answer
        assert json.loads(body)["error"]["code"] == "server_busy"
        health = httpx.get(server.url + "/health")  # GET is never refused
        assert health.status_code == 200 and health.json()["admission"] == {"active": 3, "max": 3, "refused": 1}
        slow.close()  # its slot comes back: the next request meets the queue again, not the limit
        wait_for(server, lambda h: h["admission"]["active"] == 2)
        refused = post()
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full", refused.text
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]
        assert wait_for(server, lambda h: h["admission"]["active"] == 0)["admission"]["refused"] == 1


# 5. (fuzzing) A chat temperature that is positive but tiny (5e-324, 1e-300) divided the logits into inf/nan:
#    generate raised "probability tensor contains either inf, nan" and the request was a 500. Such a
#    temperature is greedy in effect; it is now run as greedy.
def test_a_tiny_positive_temperature_is_greedy_not_a_500(tiny_florence2):
    from starlette.testclient import TestClient

    app = build_app(tiny_florence2, ServeSettings(max_new_tokens=8, chat_model_name="vl"), tiny_vl(tiny_florence2))
    ask = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                     {"type": "image_url", "image_url": {"url": data_url(picture())}}]}],
           "max_tokens": 6}
    with TestClient(app, raise_server_exceptions=False) as client:
        greedy = client.post("/v1/chat/completions", json={**ask, "temperature": 0}).json()
        for temperature in (5e-324, 1e-300, 1e-40, 1e-6):
            for stream in (False, True):
                response = client.post("/v1/chat/completions", json={**ask, "temperature": temperature,
                                                                     "stream": stream})
                assert response.status_code == 200, (temperature, response.text)
                if not stream:
                    assert response.json()["choices"][0]["message"]["content"] == \
                        greedy["choices"][0]["message"]["content"]
                else:
                    assert '"internal_error"' not in response.text and response.text.rstrip().endswith("[DONE]")
        sampled = client.post("/v1/chat/completions", json={**ask, "temperature": 0.7})
        assert sampled.status_code == 200  # an ordinary temperature still samples
