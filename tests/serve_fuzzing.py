"""What the server fuzzing tests generate and what every answer must satisfy (tests/test_serve_fuzz.py).

- `schema_strategy`: request bodies built from the app's own OpenAPI schema (`app.openapi()`, refs, anyOf,
  minimum, required), with the fields the server reads specially (image, task, text, region) drawn from
  hostile pools; `mutated` then breaks them (a required field dropped, unknown or junk fields, wrong types,
  huge numbers) and `encoded` serialises them, sometimes badly (truncated, BOM, UTF-16, NaN literals,
  duplicate keys, trailing garbage).
- `image_sources`: (value, kind) pairs for the `image` field: data: URLs and base64 good and bad, local
  paths inside the allow-list and out of it (.., absolute, symlinks, ~, %2e%2e), remote URLs, bombs.
- `check_contract`: no 5xx, every error is {"error": {"message", "type", "code"}} on one line, 401 says
  WWW-Authenticate, 503 says Retry-After, a task answer has its parts, nothing outside the allow-list shows.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image

from florence_vl.florence2.tasks import TASKS

KEY = "fuzz-key-42"
SECRET_SIZE = (37, 23)  # the image outside the allow-list: an answer of this size would mean it was read
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
ERROR_KEYS = {"message", "type", "code"}


def png(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's first bytes), then a little data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


GOOD_PNG = png()
GOOD_URL = "data:image/png;base64," + b64(GOOD_PNG)

# -- plain values -------------------------------------------------------------------------------------

HUGE_INTS = st.one_of(st.integers(0, 400).map(lambda k: 10 ** k), st.integers(0, 400).map(lambda k: -(10 ** k)),
                      st.sampled_from([2 ** 31, 2 ** 53 + 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 0, -1]))
NUMBERS = st.one_of(st.integers(-1000, 1000), HUGE_INTS,
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308, 5e-324, 0.5]))
ODD_TEXT = ["", " ", "\u202egnp.x", "\ufeffOD", "𝕆𝔻", "ＯＤ", "<loc_5><loc_6>", "<OD>", "</s><pad><s>", "<image>",
            "\x00", "a\nb", "😀" * 50, "é" * 300, "x" * 1001, "null", "true", "{}", "[]", "1e999", "%00",
            "../../etc/passwd", "Robert'); DROP TABLE--", "${jndi:ldap://127.0.0.1/x}", "{{7*7}}"]
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(ODD_TEXT),
                 st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12))
JUNK = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=10)

TASK_NAMES = [t.name for t in TASKS.values()] + [t.token for t in TASKS.values()]
NO_INPUT_TASKS = [t.name for t in TASKS.values() if t.input == "none"]
TASK_FIELD = st.one_of(st.sampled_from(NO_INPUT_TASKS), st.sampled_from(TASK_NAMES),
                       st.sampled_from(["od", "<od>", " OD ", "FLY", "<>", ""]), TEXT)
REGION_FIELD = st.one_of(st.lists(NUMBERS, min_size=0, max_size=6), st.lists(st.integers(0, 80), min_size=4, max_size=4),
                         st.sampled_from(["0,0,10,10", "1,2,3", "a,b,c,d", "nan,0,1,1", "inf,0,1,1", "", "  ,,,"]),
                         TEXT)


# -- image sources --------------------------------------------------------------------------------------

def image_sources(remote_port: int):
    """(value, kind) for the `image` field. Kinds: good, bad, outside, remote, missing, bomb, odd (any 4xx)."""
    good = st.sampled_from([
        GOOD_URL, b64(GOOD_PNG), "DATA:IMAGE/PNG;BASE64," + b64(GOOD_PNG), "data:;base64," + b64(GOOD_PNG),
        "data:image/jpeg;base64," + b64(GOOD_PNG),                       # the bytes decide, not the label
        "data:image/png;charset=utf-8;base64," + b64(GOOD_PNG),
        "data:image/png;base64," + "\n".join(b64(GOOD_PNG)[i:i + 60] for i in range(0, len(b64(GOOD_PNG)), 60)),
        "data:image/png;base64," + b64(GOOD_PNG).rstrip("="), "  " + GOOD_URL + "\n",
        "photo.png", "sub/deep.png", "sub/../photo.png", "./photo.png", "sub//deep.png", "ALLOWED/photo.png",
        "file://ALLOWED/photo.png", "inner-link.png",
        "photo.png/"])  # (pathlib drops the trailing slash: the file inside the allow-list is read)
    bad_bytes = st.one_of(st.binary(max_size=64), st.sampled_from([
        GOOD_PNG[:20], GOOD_PNG[:-24],  # (the last 20 bytes can go: Pillow needs no IEND)
        GOOD_PNG[:8] + b"\x00" * 40, b"GIF89a" + b"\x00" * 10, b"\xff\xd8\xff\xe0",
        b"BM" + b"\x00" * 30, b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"%PDF-1.4", b"<svg xmlns='x'/>", b"PK\x03\x04"]))
    bad = st.one_of(
        bad_bytes.map(lambda raw: "data:image/png;base64," + b64(raw)),
        bad_bytes.filter(lambda raw: len(raw) >= 6).map(lambda raw: b64(b"\x89PNG" + raw)),
        st.sampled_from(["data:image/png;base64,@@@@@@@@", "data:image/png,not-base64", "data:text/plain,hello",
                         "data:", "data:,", "data:image/png;base64,", "data:image/png;base64,=====",
                         "data:image/png;base64,AAAA====AAAA", "data:image/png;base64," + "A" * 10_001,
                         "data:image/png;base64," + b64(GOOD_PNG)[:-7] + "!", "data:image/png;base64;base64,AAAA",
                         "data:image/png;foo;base64," + b64(GOOD_PNG), "data:image/\u00e9;base64,AAAA"]))
    outside = st.sampled_from([
        "../outside/secret.png", "sub/../../outside/secret.png", "OUTSIDE/secret.png", "file://OUTSIDE/secret.png",
        "link.png", "sub/../link.png", "linkdir/secret.png", "/etc/passwd", "/etc/hostname", "file:///etc/passwd",
        "~", "~/x.png", "/", "/proc/self/environ", "/dev/zero", "ALLOWED/../outside/secret.png",
        "ALLOWED/sub/../../outside/secret.png", "//etc/passwd", "..", "../", "sub/../.."])
    remote = st.builds(lambda scheme, host, path: f"{scheme}://{host}/{path}",
                       st.sampled_from(["http", "https", "HTTP", "hTTpS", "ftp", "FTP"]),
                       st.sampled_from([f"127.0.0.1:{remote_port}", f"localhost:{remote_port}",
                                        f"[::1]:{remote_port}", f"user:pw@127.0.0.1:{remote_port}"]),
                       st.sampled_from(["cat.png", "", "a/../b.png", "%2e%2e/x", "?q=1"])).map(
        lambda url: (" \t" + url) if len(url) % 3 == 0 else url)
    other_schemes = st.builds(lambda s: f"{s}://127.0.0.1:{remote_port}/cat.png",
                              st.sampled_from(["gopher", "s3", "ws", "ftps", "sftp", "smb", "jar", "dict"]))
    missing = st.sampled_from([
        "missing.png", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "sub/%2e%2e/photo.png",
        "photo.png%00.jpg", "dir.png", "fifo.png", "sub", "file://localhost/photo.png",
        "\u2025/secret.png", "photo.png\u200b"])
    bombs = st.sampled_from([(100_000, 100_000), (65_535, 65_535), (2 ** 31 - 1, 1), (1, 2 ** 31 - 1), (513, 512),
                             (30_000, 30_000), (1000, 1000)]).map(lambda wh: "data:image/png;base64," + b64(png_header(*wh)))
    odd = st.one_of(TEXT, st.sampled_from(["a" * 300, "a/" * 3000, "a" * 5000, "loop", "loop/x.png", "sub/loop2",
                                           "photo.png\x00", "\x00", "con", "nul", ".", "./", "ALLOWED"]))
    return st.one_of(good.map(lambda v: (v, "good")), bad.map(lambda v: (v, "bad")),
                     outside.map(lambda v: (v, "outside")), remote.map(lambda v: (v, "remote")),
                     other_schemes.map(lambda v: (v, "odd")), missing.map(lambda v: (v, "missing")),
                     bombs.map(lambda v: (v, "bomb")), odd.map(lambda v: (v, "odd")))


# -- bodies from the OpenAPI schema -------------------------------------------------------------------------

def from_schema(schema: dict, components: dict, overrides: dict, depth: int = 0):
    """A hypothesis strategy for values valid under `schema` (the subset FastAPI/pydantic write)."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[-1]], components, overrides, depth)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, components, overrides, depth + 1) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, components, overrides, depth) for k in kind])
    if kind == "string":
        return st.text(max_size=schema.get("maxLength", 40))
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -10 ** 6 - 1) + 1)
        return st.integers(low, max(low, schema.get("maximum", low + 16)))
    if kind == "number":
        low, high = schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum",
                                                                                      schema.get("exclusiveMaximum"))
        return st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min="exclusiveMinimum" in schema,
                         exclude_max="exclusiveMaximum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        if depth > 3:
            return st.just([])
        return st.lists(from_schema(schema.get("items", {}), components, overrides, depth + 1),
                        min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 4), 4))
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))

        def field(name, sub):  # the schema's own values, or (for the fields the server reads specially) hostile ones
            own = from_schema(sub, components, overrides, depth + 1)
            return st.one_of(own, overrides[name]) if name in overrides else own

        if not properties and isinstance(schema.get("additionalProperties"), dict):  # dict[str, X]
            return st.dictionaries(st.text(max_size=6), from_schema(schema["additionalProperties"], components,
                                                                    overrides, depth + 1), max_size=3)
        return st.fixed_dictionaries({n: field(n, s) for n, s in properties.items() if n in required},
                                     optional={n: field(n, s) for n, s in properties.items() if n not in required})
    return JUNK  # no schema: anything


def request_schemas(app) -> tuple[dict[tuple[str, str], dict], dict]:
    """{(METHOD, path): JSON schema of its request body} for every operation of `app.openapi()` that declares
    one, and the schema components its refs point to."""
    spec = app.openapi()
    out, components = {}, dict(spec.get("components", {}).get("schemas", {}))
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is not None:
                out[(method.upper(), path)] = schema
    return out, components


@st.composite
def mutated(draw, bodies):
    """A schema-valid body, then 0-3 breakages."""
    body = draw(bodies)
    if not isinstance(body, dict):
        return body
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # half the bodies stay as the schema made them
        action = draw(st.sampled_from(["drop", "extra", "retype", "huge", "openai", "none"]))
        keys = sorted(body)
        if action == "drop" and keys:
            body.pop(draw(st.sampled_from(keys)))
        elif action == "extra":
            body[draw(st.sampled_from(["colour", "__proto__", "constructor", "", "image ", "IMAGE", "x" * 200]))] = \
                draw(JUNK)
        elif action == "retype" and keys:
            body[draw(st.sampled_from(keys))] = draw(JUNK)
        elif action == "openai":  # fields of OpenAI's API this server refuses, ignores or takes
            name, value = draw(st.sampled_from([("n", 2), ("n", 1), ("tools", [{"type": "function"}]), ("seed", 7),
                                                ("user", "u1"), ("metadata", {"a": 1}), ("logprobs", True),
                                                ("response_format", {"type": "json_object"}), ("stream", True),
                                                ("stream_options", {"include_usage": True}), ("stop", ["\n"]),
                                                ("frequency_penalty", 0), ("presence_penalty", 1.5)]))
            body[name] = value
        elif action == "huge" and keys:
            body[draw(st.sampled_from(keys))] = draw(HUGE_INTS)
    return body


@st.composite
def encoded(draw, value):
    """Bytes of a JSON document, mostly well formed, sometimes not."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()))
    how = draw(st.sampled_from(["plain"] * 20 + ["truncate", "bom", "utf16", "nan", "dupkey", "trailing", "latin1",
                                                 "surrogate", "deep"]))
    if how == "truncate":
        return text.encode()[: draw(st.integers(0, max(0, len(text.encode()) - 1)))]
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "utf16":
        return text.encode("utf-16")
    if how == "nan" and text.startswith("{") and len(text) > 2:
        return ('{"num_beams": NaN, "max_new_tokens": Infinity, ' + text[1:]).encode()
    if how == "dupkey" and text.startswith("{") and len(text) > 2:
        return ('{"task": "OD", "task": 5, ' + text[1:]).encode()
    if how == "trailing":
        return text.encode() + draw(st.sampled_from([b"}", b"\x00", b" garbage", b"\n{}", b"]]]"]))
    if how == "latin1":
        return text.encode("utf-8") + b"\xff\xfe\xe9"
    if how == "surrogate" and text.startswith("{") and len(text) > 2:
        return ('{"text": "\\ud800\\udfff\\ud800", ' + text[1:]).encode()
    if how == "deep":
        depth = draw(st.sampled_from([64, 1000, 20_000]))
        return b'{"image": ' + b"[" * depth + b"]" * depth + b', "task": "OD"}'
    return text.encode()


AUTH = st.one_of(st.just(f"Bearer {KEY}").map(str.encode), st.sampled_from([
    None, b"Bearer wrong", b"Bearer", b"Bearer ", b"Basic " + base64.b64encode(KEY.encode()), KEY.encode(),
    f"bearer {KEY}".encode(), f"Bearer  {KEY}  ".encode(), f"Bearer {KEY}x".encode(), f"Bearer {KEY[:-1]}".encode(),
    b"Bearer " + b"k" * 8000, "Bearer kl\u00e9".encode("latin-1"), b"Bearer \xff\xfe", b"Token " + KEY.encode()]))
CONTENT_TYPES = st.sampled_from([
    None, b"application/json", b"application/json; charset=utf-8", b"text/plain",
    b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=xyz", b"application/json; charset=utf-16",
    b"image/png", b"*/*", b"application/jsonx", b"\xe9\xe9"])


def headers(auth: bytes | None, content_type: bytes | None) -> dict:
    out = {}
    if auth is not None:
        out["authorization"] = auth
    if content_type is not None:
        out["content-type"] = content_type
    return out


# -- the contract every answer keeps --------------------------------------------------------------------------

def check_contract(response, method: str = "GET") -> None:
    status = response.status_code
    where = f"{method} {response.request.url.path} -> {status}: {response.text[:300]!r}"
    assert 100 <= status < 500, where
    if status >= 400 and method != "HEAD":
        assert response.headers.get("content-type", "").startswith("application/json"), where
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, where
        error = body["error"]
        assert all(isinstance(error[k], str) and error[k] for k in ERROR_KEYS), where
        assert "\n" not in error["message"] and "Traceback" not in error["message"], where
    if status == 401:
        assert response.headers.get("www-authenticate") == "Bearer", where
    if status in (429, 503):
        assert int(response.headers["retry-after"]) >= 1, where
    if status == 200 and method == "POST" and response.request.url.path == "/v1/florence2/tasks":
        answer = response.json()
        assert answer["object"] == "florence2.task" and answer["task"] in answer["result"], where
        assert isinstance(answer["text"], str) and len(answer["image_size"]) == 2, where
        assert tuple(answer["image_size"]) != SECRET_SIZE, f"a file outside the allow-list was read: {where}"
    if status == 200 and method == "POST" and response.request.url.path == "/v1/chat/completions":
        check_chat_answer(response, where)
    if status == 200 and method == "GET":
        assert b"root:" not in response.content[:100_000], f"a system file was served: {where}"


def check_chat_answer(response, where: str = "") -> None:
    """A whole chat answer, or a whole SSE stream: chunks, one finish_reason, [DONE] last, no error event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", where
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks), f"the stream reported an internal error: {where}"
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks), where
        assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1]), where
        return
    answer = response.json()
    assert answer["object"] == "chat.completion", where
    choice = answer["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length"), where
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], where


ROLES = st.one_of(st.sampled_from(["user", "user", "system", "assistant", "developer", "tool", "function", "",
                                   "USER"]), TEXT)
PART_TYPES = st.one_of(st.sampled_from(["text", "text", "image_url", "input_audio", "image", "file", ""]), TEXT)


def chat_overrides(images) -> dict:
    """Hostile values for the chat body's fields, beside what its schema generates."""
    text_part = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
    image_part = st.builds(lambda url, nested: {"type": "image_url", "image_url": {"url": url} if nested else url},
                           images, st.booleans())
    plausible = st.builds(lambda system, parts, history: system + history + [{"role": "user", "content": parts}],
                          st.sampled_from([[], [{"role": "system", "content": "Answer briefly."}]]),
                          st.one_of(TEXT, st.lists(st.one_of(text_part, image_part), min_size=1, max_size=3)),
                          st.sampled_from([[], [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]]))
    return {"messages": plausible, "role": ROLES, "type": PART_TYPES, "url": images,
            "max_tokens": st.one_of(st.integers(1, 6), NUMBERS), "max_completion_tokens": st.one_of(st.integers(1, 6),
                                                                                                    NUMBERS),
            "temperature": st.one_of(st.sampled_from([0, 0.7, 2, 2.01, -0.1, 5e-324, 1e-300, 1e-6]), NUMBERS),
            "top_p": st.one_of(st.sampled_from([0, 0.5, 1, 1.5]), NUMBERS), "stop": JUNK,
            "logit_bias": st.one_of(JUNK, st.dictionaries(st.one_of(st.integers(-5, 400).map(str), TEXT),
                                                          st.one_of(st.integers(-150, 150), NUMBERS), max_size=3)),
            "stream": st.one_of(st.booleans(), JUNK), "stream_options": JUNK}
