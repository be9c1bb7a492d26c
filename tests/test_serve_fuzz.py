"""Issue 7, the server under fuzzing: >= 2,000 generated requests, 0 answers 5xx, every error one JSON line.

Most requests go to the real app in process (Starlette's TestClient: the whole ASGI stack, middleware,
batcher and the tiny random Florence-2 of conftest, nothing stubbed); a smaller share goes through a real
uvicorn server on 127.0.0.1, where raw sockets also send what no HTTP client library would (bad
Content-Length, dot segments, bad request lines). Both model endpoints are fuzzed: POST /v1/florence2/tasks
(the tiny random Florence-2 of conftest) and POST /v1/chat/completions (the tiny random Florence-VL of
vl_tiny.py over it), whole and streamed. What is generated, and the contract every answer keeps, is in
tests/serve_fuzzing.py. Requests per test: schema bodies 1,000, image sources 500, endpoints x methods 500,
raw bodies 250, concurrent 72, real uvicorn 160 + 25 raw sockets: 2,507 in all. Bugs it found are pinned in
tests/test_serve_regressions.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from starlette.testclient import TestClient

from florence_vl.serve.chat_request import ChatBody
from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings

from serve_fuzzing import (AUTH, CONTENT_TYPES, GOOD_URL, JUNK, KEY, METHODS, NO_INPUT_TASKS, NUMBERS, REGION_FIELD,
                           SECRET_SIZE, TASK_FIELD, TEXT, b64, chat_overrides, check_contract, encoded, from_schema,
                           headers, image_sources, mutated, png, request_schemas)
from vl_tiny import tiny_vl

BODY_LIMIT = 64 * 1024


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


SENT: Counter = Counter()  # requests per test, checked against each budget
OUTCOMES: Counter = Counter()  # (test, path, status, error code): what the tests reached (`pytest -s` prints it)


# -- the server under test ---------------------------------------------------------------------------------


class Listener:
    """A TCP port on 127.0.0.1 that remote image URLs point at; it counts every connection made to it."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.socket.close()


@pytest.fixture(scope="module")
def remote():
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """allowed/ (the allow-list) with images, a folder and a FIFO named like images, symlinks in, out and in
    loops; outside/ with the secret image (SECRET_SIZE) that must never be read."""
    root = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "photo.png")
    (root / "sub").mkdir()
    Image.new("RGB", (30, 40), (10, 10, 200)).save(root / "sub" / "deep.png")
    Image.new("RGB", SECRET_SIZE, (250, 250, 250)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "photo.png", root / "inner-link.png")
    os.symlink(root / "loop", root / "loop")
    os.symlink(root / "sub" / "loop2", root / "sub" / "loop2")
    (root / "dir.png").mkdir()
    os.mkfifo(root / "fifo.png")
    return root, outside


def fuzz_settings(tree, **changes) -> ServeSettings:
    base = dict(api_key=KEY, allow_dirs=(tree[0],), max_body_bytes=BODY_LIMIT, max_image_pixels=512 * 512,
                max_prompt_chars=200, max_new_tokens=4, max_beams=2, default_beams=1, max_batch_size=8,
                batch_window_ms=0, max_queue=64, model_name="fuzz-f2", max_prompt_tokens=200, chat_model_name="fuzz-vl")
    return ServeSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def vl(tiny_florence2):
    return tiny_vl(tiny_florence2)


@pytest.fixture(scope="module")
def app(tiny_florence2, vl, tree):
    return build_app(tiny_florence2, fuzz_settings(tree), vl)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False, base_url="http://127.0.0.1") as running:
        yield running


def place(value: str, tree) -> str:
    return value.replace("ALLOWED", str(tree[0])).replace("OUTSIDE", str(tree[1]))


def send(client, name: str, method: str, path: str, content: bytes | None = None, hdrs: dict | None = None):
    response = client.request(method, path, content=content, headers=hdrs or {})
    record(name, path, response)
    check_contract(response, method)
    return response


def record(name: str, path: str, response) -> None:
    SENT[name] += 1
    code = None
    if response.status_code >= 400 and response.content and \
            response.headers.get("content-type", "").startswith("application/json"):
        code = response.json().get("error", {}).get("code")
    OUTCOMES[name, path.split("?")[0][:40], response.status_code, code] += 1


def report(name: str) -> Counter:
    """Statuses per path of one test, printed (seen with -s) and returned for assertions."""
    mine = Counter({k[1:]: v for k, v in OUTCOMES.items() if k[0] == name})
    print(f"\n{name}: {SENT[name]} requests")
    for (path, status, code), count in sorted(mine.items(), key=lambda kv: -kv[1]):
        print(f"  {count:5d}  {status}  {code or '':24s} {path}")
    return mine


def assert_healthy(client_or_url, budget: int | None = None, name: str | None = None) -> dict:
    """/health answers ok and, within seconds, no request is left waiting or running in either queue."""
    get = client_or_url.get if not isinstance(client_or_url, str) else (lambda p: httpx.get(client_or_url + p))
    deadline = time.monotonic() + 10
    while True:
        response = get("/health")
        assert response.status_code == 200 and response.json()["status"] == "ok", response.text
        health = response.json()
        queues = [health["queue"]] + ([health["chat"]["queue"]] if health.get("chat") else [])
        if all(q["waiting"] == 0 and q["running"] == 0 for q in queues):
            break
        assert time.monotonic() < deadline, f"requests were left behind: {health}"
        time.sleep(0.05)
    if budget is not None:
        assert SENT[name] >= budget, f"{name}: only {SENT[name]} requests were sent, the budget is {budget}"
    return health


# -- 1. bodies from the OpenAPI schema, then broken ------------------------------------------------------------


@pytest.fixture(scope="module")
def schema_ops(app, tree, remote):
    """(METHOD, path) -> a strategy for its bodies: half straight from the schema with hostile field values,
    half a body the model will run (which `mutated` may still break), so both the refusals and the
    paths past them are exercised."""
    # Both routes read their raw body (to answer their own errors) and declare its schema in OpenAPI.
    schemas, components = request_schemas(app)
    assert {("POST", "/v1/florence2/tasks"), ("POST", "/v1/chat/completions")} <= set(schemas)
    chat_schema = schemas[("POST", "/v1/chat/completions")]
    assert set(chat_schema["properties"]) == set(ChatBody.model_json_schema()["properties"])
    assert "$ref" not in json.dumps(chat_schema) and chat_schema["required"] == ["messages"]
    good = st.sampled_from([GOOD_URL, b64(png((9, 7))), "photo.png", "sub/deep.png", "file://ALLOWED/photo.png"]).map(
        lambda value: place(value, tree))
    images = st.one_of(image_sources(remote.port).map(lambda pair: place(pair[0], tree)), good)
    overrides = {**chat_overrides(images), "image": images, "task": TASK_FIELD, "text": TEXT, "region": REGION_FIELD,
                 "num_beams": st.one_of(st.integers(1, 3), NUMBERS), "max_new_tokens": st.one_of(st.integers(1, 6),
                                                                                                 NUMBERS),
                 "model": st.sampled_from([None, "fuzz-f2", "fuzz-vl", "gpt-4", "", "FUZZ-F2"])}
    runs = {("POST", "/v1/florence2/tasks"): st.fixed_dictionaries(
                {"image": good, "task": st.sampled_from(NO_INPUT_TASKS)},
                optional={"max_new_tokens": st.integers(1, 4), "draw": st.booleans(), "num_beams": st.just(1)}),
            ("POST", "/v1/chat/completions"): st.fixed_dictionaries(
                {"messages": chat_overrides(good)["messages"], "max_tokens": st.integers(1, 4)},
                optional={"stream": st.booleans(), "temperature": st.sampled_from([0, 0.7]), "stop": st.just(["."])})}
    return {op: st.one_of(from_schema(schema, components, overrides), runs[op]) if op in runs else
            from_schema(schema, components, overrides) for op, schema in sorted(schemas.items())}


def test_fuzz_bodies_from_the_openapi_schema(client, schema_ops, remote):
    ops = sorted(schema_ops)
    name = "schema"

    @fuzz(1000)
    @given(data=st.data())
    def run(data):
        method, path = data.draw(st.sampled_from(ops))
        body = data.draw(encoded(data.draw(mutated(schema_ops[(method, path)]))))
        hdrs = headers(data.draw(AUTH), data.draw(CONTENT_TYPES))
        send(client, name, method, path, body, hdrs)

    run()
    assert_healthy(client, 980, name)
    assert remote.connections == 0
    seen = report(name)
    for path in ("/v1/florence2/tasks", "/v1/chat/completions"):  # the generator reaches the models, and past them
        assert sum(n for (p, status, _), n in seen.items() if p == path and status == 200) >= 5, seen
        assert len({code for (p, _, code) in seen if p == path}) >= 6, seen


# -- 2. the image field: good, bad, outside the allow-list, remote, bombs ------------------------------------------

EXPECTED = {  # kind -> (status, codes); an image that decodes goes on to the next check (task, max_tokens)
    "good": (400, {"invalid_task_input", "max_tokens_too_large"}), "bad": (400, {"bad_image"}),
    "outside": (403, {"path_not_allowed"}), "remote": (400, {"remote_url_refused"}),
    "missing": (400, {"image_not_found"}), "bomb": (413, {"image_too_large"}), "odd": (None, None)}


def image_body(endpoint: str, value: str, run: bool) -> dict:
    """A request whose only doubtful part is the image. Unless `run`, the one check after the image fails
    (an unknown task; max_tokens over the limit), so no model runs for it."""
    if endpoint == "tasks":
        return {"image": value, "task": "OD" if run else "FLY"}
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                      {"type": "image_url", "image_url": {"url": value}}]}],
            "max_tokens": 2 if run else 99, "stream": run}


def test_fuzz_image_sources_on_both_endpoints(client, tree, remote):
    name = "images"
    kinds = Counter()

    @fuzz(500)
    @given(source=image_sources(remote.port), endpoint=st.sampled_from(["tasks", "chat"]), run_model=st.integers(0, 19))
    def run(source, endpoint, run_model):
        value, kind = source
        value = place(value, tree)
        path = "/v1/florence2/tasks" if endpoint == "tasks" else "/v1/chat/completions"
        response = send(client, name, "POST", path,
                        json.dumps(image_body(endpoint, value, run_model == 0)).encode(),  # 1 in 20 runs the model
                        {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
        kinds[kind, endpoint] += 1
        status, codes = EXPECTED[kind]
        if kind == "good" and run_model == 0:
            assert response.status_code == 200, (value[:80], response.text)
        elif status is not None:
            assert response.status_code == status and response.json()["error"]["code"] in codes, \
                (kind, value[:80], response.text)
        else:
            assert 400 <= response.status_code < 500, (value[:80], response.text)
        if kind in ("outside", "remote"):
            assert str(tree[1]) not in response.text and "secret" not in response.text.replace("secret.png", "")

    run()
    assert_healthy(client, 480, name)
    assert remote.connections == 0, "a remote image URL was fetched"
    assert all(kinds[k, e] >= 5 for k in EXPECTED for e in ("tasks", "chat")), kinds
    report(name)


# -- 3. every endpoint and method, hostile paths, headers, junk bodies -----------------------------------------------

HOSTILE_PATHS = ["/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fetc%2fpasswd",
                 "/static/%252e%252e/%252e%252e/etc/passwd", "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/static/....//....//etc/passwd", "/static//etc/passwd", "/static/%00", "/static/app.js%00.png",
                 "/static/.%2e/.%2e/etc/passwd", "/static/..\\..\\etc\\passwd", "/v1/florence2/tasks/../../health",
                 "/v1/florence2/tasks%2f..%2f..%2fhealth", "/v1//models", "/V1/MODELS", "/health/", "/health%20",
                 "/%e2%80%ae", "/\u00e9t\u00e9", "/" + "a" * 4000, "/v1/chat/completions/x", "/static/",
                 "/static", "/openapi.json?x=%00", "/health?" + "q=1&" * 200, "/docs", "/redoc", "/v1/", "/v1"]


@pytest.fixture(scope="module")
def route_paths(app):
    paths = sorted({getattr(r, "path", None) for r in app.routes} - {None, "/static"})
    return paths + ["/static/app.js", "/static/index.html", "/static/style.css", "/static/nothing.js"]


def test_fuzz_every_endpoint_and_method(client, route_paths, remote):
    name = "endpoints"
    seen = Counter()

    @fuzz(500)
    @given(method=st.sampled_from(METHODS), path=st.one_of(st.sampled_from(route_paths), st.sampled_from(HOSTILE_PATHS)),
           auth=AUTH, content_type=CONTENT_TYPES,
           body=st.one_of(st.none(), st.binary(max_size=200), JUNK.flatmap(encoded)))
    def run(method, path, auth, content_type, body):
        response = send(client, name, method, path, body, headers(auth, content_type))
        seen[(method, path in route_paths)] += 1
        if path in HOSTILE_PATHS and path.startswith("/static") and response.status_code == 200:
            assert response.content == client.get("/static/app.js").content or "/static/index" in path, path

    run()
    assert_healthy(client, 480, name)
    assert {m for m, known in seen if known} == set(METHODS)  # every method met the real routes
    report(name)


# -- 4. raw bodies: random bytes, oversized with and without Content-Length ------------------------------------------


def test_fuzz_raw_and_oversized_bodies(client):
    name = "raw"

    @fuzz(250)
    @given(path=st.sampled_from(["/v1/florence2/tasks", "/v1/chat/completions", "/health", "/"]),
           size=st.one_of(st.integers(0, 300), st.integers(BODY_LIMIT - 50, BODY_LIMIT + 50),
                          st.integers(BODY_LIMIT, 3 * BODY_LIMIT)),
           fill=st.sampled_from([b"x", b"{", b"\x00", b"\xff", b'{"image": "' + b"A" * 20]),
           chunked=st.booleans())
    def run(path, size, fill, chunked):
        raw = (fill * (size // len(fill) + 1))[:size]
        if chunked:  # no Content-Length: the limit must still hold while reading
            content = (raw[i:i + 8192] for i in range(0, len(raw), 8192))
            response = client.request("POST", path, content=content, headers={"authorization": f"Bearer {KEY}"})
            record(name, path, response)
            check_contract(response, "POST")
        else:
            response = send(client, name, "POST", path, raw, {"authorization": f"Bearer {KEY}"})
        if size > BODY_LIMIT:
            assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
        else:
            assert response.status_code != 413

    run()
    assert_healthy(client, 240, name)
    report(name)


# -- 5. concurrent: good and bad requests, tasks and chat, in the same batches ------------------------------------


def test_fuzz_concurrent_good_and_bad_requests_share_batches(client):
    name = "concurrent"
    task = {"image": GOOD_URL, "task": "OD", "max_new_tokens": 4}
    ask = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                     {"type": "image_url", "image_url": {"url": GOOD_URL}}]}],
           "max_tokens": 4}
    good = [("/v1/florence2/tasks", task), ("/v1/chat/completions", ask),
            ("/v1/chat/completions", {**ask, "stream": True, "stream_options": {"include_usage": True}}),
            ("/v1/florence2/tasks", {"image": b64(png((2, 2))), "task": "OD", "draw": True, "max_new_tokens": 4})]
    bad = [("/v1/florence2/tasks", {"image": "data:image/png;base64,@@@@", "task": "OD"}),
           ("/v1/florence2/tasks", {"image": GOOD_URL, "task": "FLY"}),
           ("/v1/florence2/tasks", {"image": "../x.png", "task": "OD"}),
           ("/v1/florence2/tasks", {"image": GOOD_URL, "task": "OD", "num_beams": 99}),
           ("/v1/florence2/tasks", {"image": GOOD_URL, "task": "REGION_TO_CATEGORY", "region": [1e308, 0, -1e308, 5]}),
           ("/v1/chat/completions", {**ask, "max_tokens": 99}), ("/v1/chat/completions", {**ask, "n": 3}),
           ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}),
           ("/v1/florence2/tasks", [1, 2, 3]), ("/v1/chat/completions", {"messages": "x" * 300})]
    calls = [good[i // 3 % len(good)] if i % 3 == 0 else bad[i % len(bad)] for i in range(36)]

    def call(job):
        path, body = job
        return client.post(path, json=body, headers={"authorization": f"Bearer {KEY}"})

    answers = []
    with ThreadPoolExecutor(12) as pool:
        for _ in range(2):
            for job, response in zip(calls, pool.map(call, calls)):
                record(name, job[0], response)
                check_contract(response, "POST")
                assert (response.status_code == 200) == (job in good), (job[0], str(job[1])[:100], response.text)
                answers.append((job, response))
    for job in good[:2]:  # the same request answers the same whatever shared its batch (greedy)
        texts = {r.json()["text"] if "tasks" in job[0] else r.json()["choices"][0]["message"]["content"]
                 for j, r in answers if j is job}
        assert len(texts) == 1, (job[0], texts)
    assert_healthy(client, 72, name)
    report(name)


# -- 6. a real uvicorn server: the same generators over a socket, and what only raw sockets can send -------------------


@pytest.fixture(scope="module")
def real_server(tiny_florence2, vl, tree):
    with BackgroundServer(build_app(tiny_florence2, fuzz_settings(tree), vl)) as server:
        yield server


RAW_REQUESTS = [
    b"GET /static/../../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/%2e%2e/%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /static/..%2f..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET ../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /health HTTP/1.0\r\n\r\n",
    b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"BREW /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS hello on the plain port
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Junk: \xff\xfe\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"image\":",  # then hangs up
    b"\r\n\r\n\r\n",
    b"",
]


def raw_exchange(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        if payload:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def test_fuzz_over_a_real_uvicorn_server(real_server, schema_ops, remote, tree):
    name = "uvicorn"
    ops = sorted(schema_ops)
    http = httpx.Client(base_url=real_server.url, timeout=30)

    @fuzz(160)
    @given(data=st.data())
    def run(data):
        method, path = data.draw(st.sampled_from(ops + [("GET", "/health"), ("GET", "/v1/models")]))
        body = data.draw(encoded(data.draw(mutated(schema_ops.get((method, path), JUNK)))))
        auth = data.draw(AUTH)
        if auth is not None:  # what h11 lets a client send: no edge blanks, under uvicorn's header limit
            auth = auth[:4000].strip() or None
        response = http.request(method, path, content=body, headers=headers(auth, data.draw(CONTENT_TYPES)))
        record(name, path, response)
        check_contract(response, method)

    try:
        run()
        statuses, bad_http = Counter(), 0
        for payload in RAW_REQUESTS:
            answer = raw_exchange(real_server.url, payload)
            SENT[name] += 1
            for line in answer.split(b"\r\n"):
                if line.startswith(b"HTTP/1.1 "):
                    status = int(line.split()[1])
                    statuses[status] += 1
                    assert status < 500, (payload[:80], answer[:300])
            assert b"root:" not in answer and b"secret" not in answer
            head, _, rest = answer.partition(b"\r\n\r\n")
            if head and not head.startswith(b"HTTP/1.1 200"):  # every error in the JSON shape, uvicorn's own too
                assert b"content-type: application/json" in head.lower(), answer[:300]
                error = json.loads(rest.partition(b"HTTP/1.1 ")[0])["error"]  # (a pipelined answer may follow)
                assert set(error) == {"message", "type", "code"}, answer[:300]
                bad_http += error["code"] == "bad_http_request"
        assert statuses[200] >= 2 and statuses[400] + statuses[404] + statuses[413] + statuses[411] >= 8, statuses
        assert bad_http >= 5  # the malformed ones, answered by the protocol (florence_vl/serve/protocol.py)
        health = assert_healthy(real_server.url, 160 + len(RAW_REQUESTS), name)
        assert health["queue"]["waiting"] == 0
        assert http.post("/v1/florence2/tasks", json={"image": GOOD_URL, "task": "OD"},
                         headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        chat = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                         json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    finally:
        http.close()
    assert remote.connections == 0
    report(name)
    print(f"raw sockets: {dict(statuses)}; all tests: {sum(SENT.values())} requests")
    if set(SENT) == {"schema", "images", "endpoints", "raw", "concurrent", "uvicorn"}:  # the whole file ran
        assert sum(SENT.values()) >= 2000, SENT  # the target
