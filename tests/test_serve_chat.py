"""POST /v1/chat/completions for real: uvicorn on 127.0.0.1, the `openai` client (and httpx) as callers.

The chat model is the tiny random Florence-VL of vl_tiny.py over the session's tiny Florence-2. Every
answer is checked against `FlorenceVL.chat` run one at a time in-process (greedy decoding).
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_api import assert_error, data_url, picture
from vl_tiny import tiny_vl

KEY = "chat-key"
QUESTIONS = ["How many shapes are there?", "What color is the star?", "Describe the image in detail.",
             "Is there a red circle?"]


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture(scope="module")
def server(tiny_florence2, vl):
    settings = ServeSettings(api_key=KEY, batch_window_ms=150, max_batch_size=8, max_new_tokens=64,
                             model_name="tiny-f2", chat_model_name="tiny-vl")
    with BackgroundServer(build_app(tiny_florence2, settings, vl)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def user(text, image=None):
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"role": "user", "content": parts}


def never_ending(vl):
    """logit_bias that bans every token that ends an answer, so generation runs to max_tokens."""
    return {str(t): -100 for t in vl.processor.stop_token_ids()}


def test_models_and_health_list_both_models(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-f2", "tiny-vl"]
    health = httpx.get(server.url + "/health").json()
    assert health["models"] == ["tiny-f2", "tiny-vl"] and health["chat"]["model"] == "tiny-vl"
    assert health["chat"]["queue"] == {"waiting": 0, "running": 0, "max": 64}


def test_answer_equals_florence_vl_chat_with_usage(client, vl):
    image = picture(seed=1)
    want = vl.chat(image, QUESTIONS[0], max_new_tokens=20)
    reply = client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[0], image)], max_tokens=20)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want
    assert reply.object == "chat.completion" and reply.model == "tiny-vl" and reply.id.startswith("chatcmpl-")
    prompt = vl.processor.prompt(QUESTIONS[0])
    assert reply.usage.prompt_tokens == len(prompt) - 1 + 5  # the image marker becomes the tiny model's 5 tokens
    assert 1 <= reply.usage.completion_tokens <= 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason == ("length" if reply.usage.completion_tokens == 20 else "stop")


def test_streamed_pieces_add_up_to_the_answer(client, vl):
    image = picture(seed=2)
    bias = never_ending(vl)
    whole = client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[2], image)], max_tokens=24,
                                           logit_bias=bias)
    want = whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 24
    chunks = list(client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[2], image)],
                                                 max_tokens=24, logit_bias=bias, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == want and len(pieces) > 3  # really streamed, piece by piece
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_sse_wire_format_ends_with_done(server, vl):
    body = {"messages": [user(QUESTIONS[1], picture(seed=3))], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_multi_turn_history_is_the_models_history(client, vl):
    image = picture(seed=4)
    first = vl.chat(image, QUESTIONS[0], max_new_tokens=8)
    want = vl.chat(image, QUESTIONS[1], history=[(QUESTIONS[0], first)], max_new_tokens=16)
    vl.feature_cache.clear()
    hits = vl.feature_cache.hits
    reply = client.chat.completions.create(model="tiny-vl", max_tokens=16, messages=[
        user(QUESTIONS[0], image), {"role": "assistant", "content": first}, {"role": "user", "content": QUESTIONS[1]}])
    assert reply.choices[0].message.content == want and vl.feature_cache.hits == hits  # computed once
    again = client.chat.completions.create(model="tiny-vl", max_tokens=16, messages=[
        user(QUESTIONS[0], image), {"role": "assistant", "content": first}, {"role": "user", "content": QUESTIONS[1]}])
    assert again.choices[0].message.content == want and vl.feature_cache.hits == hits + 1  # the image's features reused
    with_system = client.chat.completions.create(model="tiny-vl", max_tokens=16, messages=[
        {"role": "system", "content": "Answer the question using a single word or phrase."}, user(QUESTIONS[1], image)])
    folded = vl.chat(image, "Answer the question using a single word or phrase.\n\n" + QUESTIONS[1],
                     max_new_tokens=16)
    assert with_system.choices[0].message.content == folded  # the system text leads the first user turn


def test_stop_strings_cut_the_answer_whole_and_streamed(client, vl):
    image = picture(seed=5)
    bias = never_ending(vl)
    full = client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[3], image)], max_tokens=30,
                                          logit_bias=bias).choices[0].message.content
    words = [w for w in full.split() if len(w) >= 2]
    stop = words[len(words) // 2][:2]  # a stop string from the middle of the unconstrained answer
    want = full[: full.find(stop)].strip()
    cut = client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[3], image)], max_tokens=30,
                                         logit_bias=bias, stop=[stop, "never-there"])
    assert cut.choices[0].message.content == want and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 30
    streamed = client.chat.completions.create(model="tiny-vl", messages=[user(QUESTIONS[3], image)], max_tokens=30,
                                              logit_bias=bias, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want


def test_text_only_conversation_is_answered(client, vl):
    from florence_vl.vl.model import pad_rows

    ids = vl.processor.encode([(QUESTIONS[2], None)])[0]
    out = vl.model.generate(**pad_rows([ids], vl.processor.pad_id, side="left"), max_new_tokens=12, do_sample=False,
                            pad_token_id=vl.processor.pad_id, eos_token_id=vl.processor.stop_token_ids())
    want = vl.tokenizer.decode(out[0].tolist(), skip_special_tokens=True).strip()
    reply = client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": QUESTIONS[2]}],
                                           max_tokens=12)
    assert reply.choices[0].message.content == want and reply.usage.prompt_tokens == len(ids)


def test_sampling_follows_temperature(client, vl):
    image = picture(seed=6)
    bias = never_ending(vl)
    ask = lambda **kw: client.chat.completions.create(  # noqa: E731
        model="tiny-vl", messages=[user(QUESTIONS[0], image)], max_tokens=12, logit_bias=bias, **kw)
    greedy = ask(temperature=0).choices[0].message.content
    assert ask().choices[0].message.content == greedy  # no temperature: the model's default, greedy
    sampled = {ask(temperature=1.5, top_p=1.0).choices[0].message.content for _ in range(4)}
    assert sampled != {greedy} and all(isinstance(s, str) for s in sampled)


def test_eight_concurrent_clients_are_batched_and_match_one_at_a_time(server, vl):
    jobs = [(picture(seed=i, size=(60 + 5 * i, 48 + 3 * i)), QUESTIONS[i % 4], 10 + 2 * i) for i in range(8)]
    expected = [vl.chat(image, question, max_new_tokens=n) for image, question, n in jobs]
    before = httpx.get(server.url + "/health").json()["chat"]["batching"]
    barrier = threading.Barrier(len(jobs))

    def call(k):
        image, question, n = jobs[k]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        barrier.wait()
        if k % 2:  # half of them stream
            stream = client.chat.completions.create(model="tiny-vl", messages=[user(question, image)],
                                                    max_tokens=n, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.chat.completions.create(model="tiny-vl", messages=[user(question, image)],
                                              max_tokens=n).choices[0].message.content

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(call, range(len(jobs))))
    assert answers == expected
    after = httpx.get(server.url + "/health").json()["chat"]["batching"]
    assert after["items"] - before["items"] == 8
    assert after["batches"] - before["batches"] < 8 and after["largest_batch"] > 1  # really batched


def test_local_image_paths_only_under_allow_dir(tiny_florence2, vl, tmp_path):
    picture(seed=7).save(tmp_path / "photo.png")
    settings = ServeSettings(allow_dirs=(tmp_path,), max_new_tokens=8, chat_model_name="tiny-vl")
    with BackgroundServer(build_app(tiny_florence2, settings, vl)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        message = {"role": "user", "content": [{"type": "text", "text": QUESTIONS[0]},
                                               {"type": "image_url", "image_url": {"url": "photo.png"}}]}
        reply = client.chat.completions.create(model="tiny-vl", messages=[message], max_tokens=8)
        assert reply.choices[0].message.content == vl.chat(Image.open(tmp_path / "photo.png"), QUESTIONS[0],
                                                           max_new_tokens=8)
        message["content"][1]["image_url"]["url"] = "/etc/passwd"
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model="tiny-vl", messages=[message], max_tokens=8)


def test_without_a_chat_model_the_task_api_still_works(tiny_florence2):
    with BackgroundServer(build_app(tiny_florence2, ServeSettings())) as running:
        response = httpx.post(running.url + "/v1/chat/completions", json={"messages": [user("hi")]})
        assert_error(response, 501, "chat_not_available", "--vl-model", "Florence-VL")
        task = httpx.post(running.url + "/v1/florence2/tasks", timeout=60,
                          json={"image": data_url(picture()), "task": "OD", "num_beams": 1, "max_new_tokens": 8})
        assert task.status_code == 200 and httpx.get(running.url + "/health").json()["chat"] is None


# -- `florence-vl serve --vl-model` -------------------------------------------------------------------


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_serve_command_loads_the_chat_model(tiny_florence2, tmp_path, monkeypatch, capsys):
    import uvicorn

    from florence_vl import cli
    from florence_vl.vl.tiny_checkpoint import make_tiny_vl_checkpoint

    checkpoint = make_tiny_vl_checkpoint(tmp_path / "vl", preset="tiny")
    started = {}
    monkeypatch.setattr(cli, "_load_florence2", lambda args: tiny_florence2)
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    assert cli.main(["serve", "--vl-model", str(checkpoint), "--vl-model-name", "vl-cli", "--port", "0"]) == 2
    assert cli.main(["serve", "--vl-model", str(checkpoint), "--vl-model-name", "vl-cli", "--max-new-tokens", "8",
                     "--port", free_port()]) == 0
    assert "chat vl-cli" in capsys.readouterr().err
    with BackgroundServer(started["app"]) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["florence-2", "vl-cli"]
        reply = client.chat.completions.create(model="vl-cli", messages=[user(QUESTIONS[0], picture())])
        assert reply.usage.completion_tokens <= 8 and reply.choices[0].finish_reason in ("stop", "length")


def test_serve_command_chat_model_mistakes_and_defaults(tiny_florence2, tmp_path, monkeypatch, capsys):
    import argparse

    from florence_vl import cli, models
    from florence_vl.serve.server import chat_model_source

    monkeypatch.setattr(cli, "_load_florence2", lambda args: tiny_florence2)
    assert cli.main(["serve", "--vl-model", str(tmp_path / "nope"), "--port", free_port()]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("florence-vl serve: error:") and "nope" in err
    monkeypatch.setattr(models, "NANO_ROOT", tmp_path)
    assert chat_model_source(argparse.Namespace(vl_model=None)) is None  # no shipped Florence-VL-nano: no chat
    (tmp_path / "florence-vl").mkdir()
    (tmp_path / "florence-vl" / "florence_vl.json").write_text("{}")
    assert chat_model_source(argparse.Namespace(vl_model=None)) == "nano"  # shipped: the default chat model
    assert chat_model_source(argparse.Namespace(vl_model="none")) is None
    assert chat_model_source(argparse.Namespace(vl_model="some/dir")) == "some/dir"
