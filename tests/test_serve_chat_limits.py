"""The chat endpoint's limits and mistakes (each one clean 4xx JSON line), overload and disconnects.

A small strict server for the limits; a model held at a gate for a full queue; a model slowed per step
for a streaming client that leaves mid-answer.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_api import assert_error, data_url, noise, picture, wait_for
from vl_tiny import tiny_vl


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture(scope="module")
def strict(tiny_florence2, vl):
    settings = ServeSettings(max_body_bytes=30_000, max_image_pixels=100 * 100, max_prompt_tokens=60,
                             max_new_tokens=32, chat_model_name="tiny-vl")
    with BackgroundServer(build_app(tiny_florence2, settings, vl)) as running:
        yield running


def chat(server, body, **kwargs):
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60, **kwargs)


def ask(text="How many shapes are there?", image=None, **extra):
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": image}})
    return {"messages": [{"role": "user", "content": parts}], **extra}


SMALL = "SMALL"


@pytest.mark.parametrize("body,status,code,words", [
    (ask(image="BIG_NOISE"), 413, "body_too_large", ["30000 bytes"]),
    (ask(image="TOO_MANY_PIXELS"), 413, "image_too_large", ["10100 pixels"]),
    (ask("red " * 40, image=SMALL), 400, "prompt_too_long", ["at most 60"]),
    (ask(image=SMALL, max_tokens=33), 400, "max_tokens_too_large", ["32"]),
    (ask(image=SMALL, max_completion_tokens=33), 400, "max_tokens_too_large", ["32"]),
    (ask(image=SMALL, max_tokens=0), 400, "invalid_request", ["max_tokens"]),
    (ask(image=SMALL, temperature=3), 400, "invalid_request", ["temperature"]),
    (ask(image=SMALL, top_p=0), 400, "invalid_request", ["top_p"]),
    (ask(image=SMALL, stop=["a", "b", "c", "d", "e"]), 400, "invalid_request", ["stop"]),
    (ask(image=SMALL, stop=[""]), 400, "invalid_request", ["stop"]),
    (ask(image=SMALL, n=2), 400, "unsupported_parameter", ["n is not supported"]),
    (ask(image=SMALL, tools=[{"type": "function"}]), 400, "unsupported_parameter", ["tools"]),
    (ask(image=SMALL, colour="red"), 400, "invalid_request", ["unknown field 'colour'"]),
    (ask(image=SMALL, logit_bias={"99999": 5}), 400, "invalid_request", ["logit_bias"]),
    (ask(image=SMALL, logit_bias={"3": 500}), 400, "invalid_request", ["between -100 and 100"]),
    (ask(image=SMALL, model="gpt-4o"), 404, "model_not_found", ["gpt-4o"]),
    (ask(image="http://127.0.0.1:9/cat.png"), 400, "remote_url_refused", ["remote"]),
    (ask(image="https://example.invalid/cat.png"), 400, "remote_url_refused", ["remote"]),
    (ask(image="data:image/png;base64,@@@@"), 400, "bad_image", ["base64"]),
    (ask(image="aGVsbG8gd29ybGQh"), 400, "bad_image", ["not an image"]),
    (ask(image="file:///etc/passwd"), 403, "local_paths_off", ["--allow-dir"]),
    (ask(image="photo.png"), 400, "bad_image", ["local paths are off"]),
    ({"messages": []}, 400, "invalid_request", ["messages"]),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_request", ["role 'tool'"]),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_request", ["start with a user"]),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
     "invalid_request", ["last message"]),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "invalid_request", ["empty"]),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, 400, "unsupported_content",
     ["input_audio"]),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "invalid_request", ["image_url"]),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": SMALL}},
                                                {"type": "image_url", "image_url": {"url": SMALL}}]}]},
     400, "too_many_images", ["at most one image", "got 2"]),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": SMALL}}]},
                   {"role": "assistant", "content": "ok"},
                   {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SMALL}}]}]},
     400, "too_many_images", ["got 2"]),
    ({"messages": "hello"}, 400, "invalid_request", ["messages"]),
])
def test_each_mistake_is_one_clear_4xx(strict, body, status, code, words):
    images = {SMALL: data_url(picture()), "BIG_NOISE": data_url(noise((99, 99))),
              "TOO_MANY_PIXELS": data_url(Image.new("RGB", (101, 100)))}

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return images.get(value, value) if isinstance(value, str) else value

    error = assert_error(chat(strict, fill(body)), status, code, *words)
    assert "Traceback" not in error["message"]


def test_limits_themselves_are_allowed_and_the_openai_client_sees_the_errors(strict, vl):
    client = openai.OpenAI(base_url=strict.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    at_limit = ask(image=data_url(Image.new("RGB", (100, 100), (9, 90, 200))), max_tokens=32)
    reply = client.chat.completions.create(model="tiny-vl", **at_limit)
    assert reply.usage.completion_tokens <= 32 and isinstance(reply.choices[0].message.content, str)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="tiny-vl", **ask(image=data_url(picture()), max_tokens=33))
    assert "over this server's limit" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", **ask())
    for raw in (b'{"messages": ', b"[1, 2]", b"\xff\xfe"):
        assert_error(httpx.post(strict.url + "/v1/chat/completions", content=raw, timeout=30), 400,
                     "invalid_request")


def test_prompt_and_max_tokens_must_fit_the_context(tiny_florence2, vl):
    settings = ServeSettings(max_new_tokens=1024, max_prompt_tokens=1024, chat_model_name="tiny-vl")
    with BackgroundServer(build_app(tiny_florence2, settings, vl)) as running:
        error = assert_error(chat(running, ask(image=data_url(picture()), max_tokens=250)), 400,
                             "context_length_exceeded", "context of 256")
        assert "max_tokens (250)" in error["message"]
        assert_error(chat(running, ask("red " * 300)), 400, "context_length_exceeded", "whole context is 256")
        room = chat(running, ask(image=data_url(picture()), logit_bias={"1": -100, "7": -100}))
        assert room.status_code == 200  # no max_tokens: as many as fit the context
        usage = room.json()["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == 256


# -- overload and disconnects -------------------------------------------------------------------------


class Gate:
    """The tiny Florence-VL whose generate waits until the test opens the gate."""

    def __init__(self, vl):
        self._vl, self.gate = vl, threading.Event()
        self.model = self

    def __getattr__(self, name):
        target = self._vl if name in ("processor", "tokenizer", "source", "image_processor", "image_embeds") \
            else self._vl.model
        return getattr(target, name)

    def generate(self, *args, **kwargs):
        assert self.gate.wait(20), "test gate never opened"
        return self._vl.model.generate(*args, **kwargs)


def test_full_queue_answers_503_with_retry_after_at_once(tiny_florence2, vl):
    gated = Gate(vl)
    settings = ServeSettings(max_batch_size=1, batch_window_ms=0, max_queue=2, max_new_tokens=8)
    body = ask(image=data_url(picture()), max_tokens=4)
    with BackgroundServer(build_app(tiny_florence2, settings, gated)) as server, ThreadPoolExecutor(3) as pool:
        first = pool.submit(chat, server, body)
        wait_for(server, lambda h: h["chat"]["queue"]["running"] == 1)
        queued = [pool.submit(chat, server, {**body, "stream": True}), pool.submit(chat, server, body)]
        wait_for(server, lambda h: h["chat"]["queue"]["waiting"] == 2)
        started = time.monotonic()
        refused = chat(server, {**body, "stream": True})  # streaming or not: refused before the answer starts
        assert time.monotonic() - started < 2
        assert_error(refused, 503, "queue_full", "queue is full")
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
        assert queued[0].result().text.rstrip().endswith("data: [DONE]")
        assert wait_for(server, lambda h: True)["chat"]["batching"]["rejected"] == 1


def test_a_client_that_leaves_mid_stream_frees_the_model_at_once(tiny_florence2, vl):
    slow = vl.model.llm.register_forward_pre_hook(lambda module, args: time.sleep(0.05))  # ~20 tokens/s
    settings = ServeSettings(max_batch_size=1, batch_window_ms=0, max_new_tokens=200, chat_model_name="tiny-vl")
    never_ends = {str(t): -100 for t in vl.processor.stop_token_ids()}
    try:
        with BackgroundServer(build_app(tiny_florence2, settings, vl)) as server:
            body = ask(image=data_url(picture()), max_tokens=200, logit_bias=never_ends, stream=True)  # ~10 s whole
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
                lines = response.iter_lines()
                data = [line for line in (next(lines) for _ in range(8)) if line.startswith("data: ")]
                assert len(data) >= 3  # the answer was under way
            left = time.monotonic()  # the stream is closed here: the client is gone
            health = wait_for(server, lambda h: h["chat"]["queue"]["running"] == 0, timeout=5)
            assert time.monotonic() - left < 3 and health["chat"]["cancelled"] == 1
            reply = chat(server, ask(image=data_url(picture(seed=2)), max_tokens=5))
            assert reply.status_code == 200 and time.monotonic() - left < 5
            assert wait_for(server, lambda h: True)["chat"]["completion_tokens"] < 100  # the first row stopped early
    finally:
        slow.remove()


def test_a_waiting_client_that_leaves_is_taken_out_of_the_queue(tiny_florence2, vl):
    gated = Gate(vl)
    settings = ServeSettings(max_batch_size=1, batch_window_ms=0, max_queue=1, max_new_tokens=8)
    body = ask(image=data_url(picture()), max_tokens=4)
    with BackgroundServer(build_app(tiny_florence2, settings, gated)) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(chat, server, body)
        wait_for(server, lambda h: h["chat"]["queue"]["running"] == 1)
        with pytest.raises(httpx.ReadTimeout):  # gives up while queued
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
        health = wait_for(server, lambda h: h["chat"]["queue"]["waiting"] == 0)
        assert health["chat"]["batching"]["dropped"] == 1
        second = pool.submit(chat, server, body)
        wait_for(server, lambda h: h["chat"]["queue"]["waiting"] == 1)  # the freed slot is taken
        gated.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert wait_for(server, lambda h: True)["chat"]["batching"]["items"] == 2
