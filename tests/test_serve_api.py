"""The HTTP server for real: uvicorn on 127.0.0.1 (a free port), httpx and the openai client as callers.

The model is the session's tiny random Florence-2 (conftest). Generation is kept short (greedy, few tokens)
so the whole file stays quick on two cores.
"""

import base64
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image, ImageDraw

from florence_vl.florence2.runner import TaskRequest
from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings

FAST = {"num_beams": 1, "max_new_tokens": 12}
KEY = "test-key-123"


def picture(size=(72, 56), seed=0) -> Image.Image:
    image = Image.new("RGB", size, (20 + 40 * seed % 255, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle([5 + seed, 6, 30 + 2 * seed, 40], fill=(230, 40 + 20 * seed % 200, 30))
    draw.ellipse([38, 10, 66, 46 - seed], fill=(250, 220, 0))
    return image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def serving(florence, **settings):
    return BackgroundServer(build_app(florence, ServeSettings(**settings)))


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def assert_error(response, status, code, *words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and "\n" not in error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    return error


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    picture(seed=3).save(root / "photo.png")
    (root / "sub").mkdir()
    picture(seed=4).save(root / "sub" / "deep.png")
    outside = tmp_path_factory.mktemp("outside")
    picture(seed=5).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")  # inside by name, outside in fact
    return root, outside


@pytest.fixture(scope="module")
def server(tiny_florence2, allowed):
    with serving(tiny_florence2, api_key=KEY, allow_dirs=(allowed[0],), batch_window_ms=150,
                 max_batch_size=8, max_new_tokens=64, model_name="tiny-f2") as running:
        yield running


def test_health_models_and_task_table(server):
    import openai

    health = httpx.get(server.url + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["models"] == ["tiny-f2"] and health["auth"] is True
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-f2"]
    table = httpx.get(server.url + "/v1/florence2/tasks").json()
    assert len(table["data"]) == 15 and {"name": "OD", "token": "<OD>", "input": "none"}.items() <= \
        table["data"][3].items()
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>florence-vl</title>" in page.text
    assert httpx.get(server.url + "/static/app.js").status_code == 200


def test_concurrent_clients_get_the_one_at_a_time_results(server, tiny_florence2):
    jobs = [(picture(seed=i, size=(60 + 4 * i, 50 + 3 * i)), task, text, region) for i, (task, text, region) in
            enumerate([("OD", None, None), ("CAPTION", None, None), ("REGION_TO_CATEGORY", None, [3, 4, 30, 40]),
                       ("CAPTION_TO_PHRASE_GROUNDING", "a red circle", None), ("OCR_WITH_REGION", None, None),
                       ("REGION_PROPOSAL", None, None), ("REFERRING_EXPRESSION_SEGMENTATION", "white cross", None),
                       ("OD", None, None)])]
    expected = [tiny_florence2.run_requests([TaskRequest(img, task, text, region)], batch_size=1, **FAST)[0]
                for img, task, text, region in jobs]
    before = httpx.get(server.url + "/health").json()["batching"]
    barrier = threading.Barrier(len(jobs))

    def call(job):
        img, task, text, region = job
        body = {"image": data_url(img), "task": task, "text": text, "region": region, **FAST}
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(server.url + "/v1/florence2/tasks", json=body, headers=auth())

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(call, jobs))
    for response, want in zip(responses, expected):
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["task"] == want.task and got["text"] == want.text and got["prompt"] == want.prompt
        output, want_output = got["result"][want.task], want.output
        if isinstance(want_output, dict):  # scores: equal up to the float noise of batched matmuls
            assert output.pop("scores", []) == pytest.approx(want_output.get("scores", []), rel=1e-4)
            want_output = {k: v for k, v in want_output.items() if k != "scores"}
        assert output == want_output and got["image_size"] == list(want.image_size)
        assert got["model"] == "tiny-f2" and got["object"] == "florence2.task"
    after = httpx.get(server.url + "/health").json()["batching"]
    assert after["items"] - before["items"] == len(jobs)
    assert after["batches"] - before["batches"] < len(jobs) and after["largest_batch"] > 1  # really batched


def test_every_image_source_gives_the_same_answer(server, allowed):
    root, _ = allowed
    raw = png_bytes(Image.open(root / "photo.png"))
    sources = ["data:image/png;base64," + base64.b64encode(raw).decode(), base64.b64encode(raw).decode(),
               str(root / "photo.png"), "photo.png", "sub/../photo.png", "file://" + str(root / "photo.png")]
    texts = set()
    for source in sources:
        response = httpx.post(server.url + "/v1/florence2/tasks", json={"image": source, "task": "OD", **FAST},
                              headers=auth(), timeout=60)
        assert response.status_code == 200, (source[:40], response.text)
        texts.add((response.json()["text"], tuple(response.json()["image_size"])))
    assert len(texts) == 1
    deep = httpx.post(server.url + "/v1/florence2/tasks", json={"image": "sub/deep.png", "task": "OD", **FAST},
                      headers=auth(), timeout=60)
    assert deep.status_code == 200


@pytest.mark.parametrize("source,status,code", [
    ("../outside/secret.png", 403, "path_not_allowed"),
    ("sub/../../outside/secret.png", 403, "path_not_allowed"),
    ("/etc/passwd", 403, "path_not_allowed"),
    ("link.png", 403, "path_not_allowed"),          # a symlink out of the folder
    ("file:///etc/hostname", 403, "path_not_allowed"),
    ("missing.png", 400, "image_not_found"),
    ("http://127.0.0.1:9/cat.png", 400, "remote_url_refused"),
    ("https://example.invalid/cat.png", 400, "remote_url_refused"),
])
def test_paths_outside_the_allowed_folder_and_remote_urls_are_refused(server, allowed, source, status, code):
    if source.startswith("../outside"):
        source = os.path.relpath(allowed[1] / "secret.png", allowed[0])
    elif source.startswith("sub/../../outside"):
        source = "sub/../" + os.path.relpath(allowed[1] / "secret.png", allowed[0])
    response = httpx.post(server.url + "/v1/florence2/tasks", json={"image": source, "task": "OD"},
                          headers=auth(), timeout=30)
    error = assert_error(response, status, code)
    assert "secret" not in error["message"] or status == 400


def test_drawing_comes_back_as_a_png_of_the_image_size(server):
    response = httpx.post(server.url + "/v1/florence2/tasks", headers=auth(), timeout=60,
                          json={"image": data_url(picture(size=(90, 70))), "task": "OD", "draw": True, **FAST})
    assert response.status_code == 200, response.text
    header, _, payload = response.json()["drawing"].partition(",")
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as drawn:
        assert drawn.format == "PNG" and drawn.size == (90, 70)


def test_api_key_is_enforced(server):
    import openai

    body = {"image": data_url(picture()), "task": "OD", **FAST}
    for headers in ({}, auth("wrong"), {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = httpx.post(server.url + "/v1/florence2/tasks", json=body, headers=headers)
        assert_error(response, 401, "invalid_api_key", "API key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(server.url + "/v1/models"), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.post(server.url + "/v1/florence2/tasks", json=body, headers=auth(), timeout=60).status_code == 200


def test_chat_without_a_chat_model_says_so(server):
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="tiny-f2", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 501 and "Florence-VL" in raised.value.message


# -- limits: a small server, every limit its own clear 4xx --------------------------------------------


@pytest.fixture(scope="module")
def strict(tiny_florence2):
    with serving(tiny_florence2, max_body_bytes=30_000, max_image_pixels=100 * 100, max_prompt_chars=40,
                 max_new_tokens=32, max_beams=2, default_beams=1) as running:
        yield running


def post(server, body=None, **kwargs):
    return httpx.post(server.url + "/v1/florence2/tasks", json=body, timeout=60, **kwargs)


def noise(size):
    return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))


@pytest.mark.parametrize("name", ["body", "pixels", "prompt", "max_new_tokens", "num_beams"])
def test_each_limit_gives_its_4xx(strict, name):
    small = data_url(picture())
    body, status, code, word = {
        "body": ({"image": data_url(noise((99, 99))), "task": "OD"}, 413, "body_too_large", "30000 bytes"),
        "pixels": ({"image": data_url(Image.new("RGB", (101, 100))), "task": "OD"}, 413, "image_too_large",
                   "10100 pixels"),
        "prompt": ({"image": small, "task": "CAPTION_TO_PHRASE_GROUNDING", "text": "x" * 41}, 400,
                   "prompt_too_long", "at most 40"),
        "max_new_tokens": ({"image": small, "task": "OD", "max_new_tokens": 33}, 400, "max_new_tokens_too_large",
                           "32"),
        "num_beams": ({"image": small, "task": "OD", "num_beams": 3}, 400, "num_beams_too_large", "2"),
    }[name]
    assert_error(post(strict, body), status, code, word)
    at_limit = {"body": None, "pixels": {"image": data_url(Image.new("RGB", (100, 100))), "task": "OD"},
                "prompt": {"image": small, "task": "CAPTION_TO_PHRASE_GROUNDING", "text": "a red circle" * 3},
                "max_new_tokens": {"image": small, "task": "OD", "max_new_tokens": 32},
                "num_beams": {"image": small, "task": "OD", "num_beams": 2, "max_new_tokens": 8}}[name]
    if at_limit is not None:
        assert post(strict, at_limit).status_code == 200  # the limit itself is allowed


def test_body_limit_holds_without_a_content_length(strict):
    def chunks():
        for _ in range(20):
            yield b"x" * 4096

    response = httpx.post(strict.url + "/v1/florence2/tasks", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert_error(response, 413, "body_too_large")


@pytest.mark.parametrize("body,code,words", [
    ({"task": "OD"}, "invalid_request", ["image", "required"]),
    ({"image": "x", "task": "OD", "colour": "red"}, "invalid_request", ["unknown field", "colour"]),
    ({"image": "aGVsbG8gd29ybGQh", "task": "OD"}, "bad_image", ["not an image"]),
    ({"image": "data:image/png;base64,@@@@", "task": "OD"}, "bad_image", ["base64"]),
    ({"image": "data:text/plain,hello", "task": "OD"}, "bad_image", ["base64"]),
    ({"image": "photo.png", "task": "OD"}, "bad_image", ["local paths are off"]),
    ({"image": "PICTURE", "task": "FLY"}, "invalid_task_input", ["unknown task 'FLY'"]),
    ({"image": "PICTURE", "task": "CAPTION_TO_PHRASE_GROUNDING"}, "invalid_task_input", ['"text"']),
    ({"image": "PICTURE", "task": "REGION_TO_OCR", "region": [5, 5, 1, 1]}, "invalid_task_input", ["empty"]),
    ({"image": "PICTURE", "task": "OD", "text": "cat"}, "invalid_task_input", ["takes no input"]),
    ({"image": "PICTURE", "task": "OD", "max_new_tokens": 0}, "invalid_request", ["max_new_tokens"]),
    ({"image": "PICTURE", "task": "OD", "model": "gpt-4"}, "model_not_found", ["gpt-4"]),
])
def test_bad_requests_get_one_clear_line(strict, body, code, words):
    body = {k: data_url(picture()) if v == "PICTURE" else v for k, v in body.items()}
    status = {"model_not_found": 404}.get(code, 400)
    error = assert_error(post(strict, body), status, code, *words)
    assert "Traceback" not in error["message"]


def test_json_bodies_whatever_the_content_type_and_unknown_routes(strict):
    response = httpx.post(strict.url + "/v1/florence2/tasks", content=b'{"image": ',
                          headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request", "not valid JSON")
    import json

    as_form = httpx.post(strict.url + "/v1/florence2/tasks", timeout=60,  # what `curl -d` sends
                         content=json.dumps({"image": data_url(picture()), "task": "OD", "max_new_tokens": 8}),
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert as_form.status_code == 200 and as_form.json()["task"] == "<OD>"
    assert_error(httpx.post(strict.url + "/v1/florence2/tasks", json=[1, 2]), 400, "invalid_request", "object")
    assert_error(httpx.get(strict.url + "/v1/nothing"), 404, "http_error", "/v1/nothing")
    assert_error(httpx.delete(strict.url + "/health"), 405, "http_error")


def test_local_paths_are_off_without_allow_dir(strict, allowed):
    response = post(strict, {"image": "file://" + str(allowed[0] / "photo.png"), "task": "OD"})
    assert_error(response, 403, "local_paths_off", "--allow-dir")


# -- overload: a model held at a gate, so the queue fills for sure ------------------------------------


class GatedFlorence:
    """The tiny model behind a gate: batches wait until the test opens it."""

    def __init__(self, florence):
        self.florence, self.source = florence, "gated"
        self.gate = threading.Event()

    def check_request(self, request):
        return self.florence.check_request(request)

    def run_requests(self, requests, **options):
        assert self.gate.wait(20), "test gate never opened"
        return self.florence.run_requests(requests, **options)


def wait_for(server, predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(server.url + "/health").json()
        if predicate(health):
            return health
        assert time.monotonic() < deadline, f"server never reached the state; last /health: {health}"
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after_at_once(tiny_florence2):
    gated = GatedFlorence(tiny_florence2)
    body = {"image": data_url(picture()), "task": "OD", **FAST}
    with serving(gated, max_batch_size=1, batch_window_ms=0, max_queue=2) as server, ThreadPoolExecutor(3) as pool:
        send = lambda: httpx.post(server.url + "/v1/florence2/tasks", json=body, timeout=60)  # noqa: E731
        first = pool.submit(send)
        wait_for(server, lambda h: h["queue"]["running"] == 1)
        queued = [pool.submit(send) for _ in range(2)]
        wait_for(server, lambda h: h["queue"]["waiting"] == 2)
        started = time.monotonic()
        refused = send()
        assert time.monotonic() - started < 2  # answered at once, not after the queue drains
        assert_error(refused, 503, "queue_full", "queue is full")
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
        assert wait_for(server, lambda h: True)["batching"]["rejected"] == 1


def test_a_client_that_disconnects_frees_its_queue_slot(tiny_florence2):
    gated = GatedFlorence(tiny_florence2)
    body = {"image": data_url(picture()), "task": "OD", **FAST}
    with serving(gated, max_batch_size=1, batch_window_ms=0, max_queue=1) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, server.url + "/v1/florence2/tasks", json=body, timeout=60)
        wait_for(server, lambda h: h["queue"]["running"] == 1)
        with pytest.raises(httpx.ReadTimeout):  # this client gives up while queued
            httpx.post(server.url + "/v1/florence2/tasks", json=body, timeout=httpx.Timeout(5, read=0.5))
        health = wait_for(server, lambda h: h["queue"]["waiting"] == 0)
        assert health["batching"]["dropped"] == 1
        second = pool.submit(httpx.post, server.url + "/v1/florence2/tasks", json=body, timeout=60)
        wait_for(server, lambda h: h["queue"]["waiting"] == 1)  # the freed slot is taken, not refused
        gated.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert wait_for(server, lambda h: True)["batching"]["items"] == 2  # the one who left never ran


def test_serve_command_mistakes_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import socket

    from florence_vl import cli

    monkeypatch.setattr(cli, "_load_florence2", lambda args: pytest.fail("the model must not load"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for argv, words in [(["--port", port], "cannot listen on 127.0.0.1:" + port),
                            (["--allow-dir", str(tmp_path / "nope")], "is not a directory"),
                            (["--beams", "9"], "over --max-beams"), (["--port", "0"], "--port"),
                            (["--max-queue", "0"], "max-queue must be at least 1")]:
            assert cli.main(["serve", "--model", "x", *argv]) == 2, argv
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith("florence-vl serve: error:") and words in err
