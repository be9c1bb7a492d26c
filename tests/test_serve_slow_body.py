"""Issue 7: a client that trickles its request body (slowloris) or stops sending it does not hold a slot for
ever. The whole body must arrive within --body-timeout (ServeSettings.body_timeout_s) of the headers; past it
the server answers 408 `body_timeout` and closes the connection, its --max-active slot is free again, and
other clients are served meanwhile and afterwards. The headers have their own limit, --header-timeout (the
protocol, florence_vl/serve/protocol.py): a connection that sends nothing, or trickles its headers, is
answered 408 `header_timeout` and closed; keep-alive connections are not affected. Raw sockets on a real
uvicorn server (127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_api import data_url, picture, wait_for

TIMEOUT = 1.5
TASK = {"image": data_url(picture()), "task": "OD", "num_beams": 1, "max_new_tokens": 4}


def read_answer(sock: socket.socket) -> tuple[bytes, dict, float]:
    """The whole answer until the server closes; (head, JSON body, when the close came)."""
    answer = b""
    while chunk := sock.recv(65536):  # bytes the client sends after the answer are dropped, not reset (lingering)
        answer += chunk
    closed = time.monotonic()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body), closed


def one_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length bytes of body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"\0closed"
        assert not data.endswith(b"\0closed"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


class Trickler(threading.Thread):
    """Sends headers announcing `length` bytes, then one byte every `every` s until the server answers."""

    def __init__(self, server, length: int = 10_000, every: float = 0.1):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((server.host, server.port), timeout=30)
        self.length, self.every, self.sent, self.error = length, every, 0, None
        self.sock.sendall(f"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {length}\r\n\r\n".encode())
        self.started = time.monotonic()
        self.done = threading.Event()

    def run(self):
        try:
            while not self.done.is_set() and self.sent < self.length - 1:
                self.sock.sendall(b" ")
                self.sent += 1
                self.done.wait(self.every)
        except OSError as error:  # the server closed on us: expected once it answered
            self.error = error


def test_a_trickled_body_is_answered_408_and_closed_within_the_timeout(tiny_florence2):
    settings = ServeSettings(max_batch_size=2, max_queue=4, max_new_tokens=8, body_timeout_s=TIMEOUT)
    with BackgroundServer(build_app(tiny_florence2, settings)) as server:
        slow = Trickler(server)
        slow.start()
        served = [httpx.post(server.url + "/v1/florence2/tasks", json=TASK, timeout=30).status_code
                  for _ in range(3)]  # normal clients meanwhile
        assert served == [200, 200, 200]
        head, body, closed = read_answer(slow.sock)
        slow.done.set()
        took = closed - slow.started
        assert head.startswith(b"HTTP/1.1 408"), head
        assert body["error"]["code"] == "body_timeout" and "1.5 s" in body["error"]["message"], body
        assert TIMEOUT - 0.1 <= took < TIMEOUT + 2.0, took  # answered and closed once the time was up
        assert slow.sent >= 5  # it was sending all along: a trickle, not a stall
        assert wait_for(server, lambda h: h["admission"]["active"] == 0)["admission"]["refused"] == 0
        assert httpx.post(server.url + "/v1/florence2/tasks", json=TASK, timeout=30).status_code == 200


def test_slow_clients_holding_every_slot_are_dropped_and_the_slots_come_back(tiny_florence2):
    """With --max-active 2, two tricklers (one trickling, one stalled after its headers) hold both slots: a
    normal POST is 503 server_busy at once (GET still answers). When the body timeout is up both are answered
    408 and closed, and the next normal POST is served."""
    settings = ServeSettings(max_batch_size=2, max_queue=4, max_new_tokens=8, body_timeout_s=TIMEOUT, max_active=2)
    with BackgroundServer(build_app(tiny_florence2, settings)) as server:
        slow = [Trickler(server, every=0.2), Trickler(server, every=3600)]
        for s in slow:
            s.start()
        wait_for(server, lambda h: h["admission"]["active"] == 2)
        busy = httpx.post(server.url + "/v1/florence2/tasks", json=TASK, timeout=30)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "server_busy", busy.text
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        for s in slow:
            head, body, closed = read_answer(s.sock)
            s.done.set()
            assert head.startswith(b"HTTP/1.1 408") and body["error"]["code"] == "body_timeout", head
            assert closed - s.started < TIMEOUT + 2.0
        health = wait_for(server, lambda h: h["admission"]["active"] == 0)
        assert health["admission"]["refused"] == 1
        answer = httpx.post(server.url + "/v1/florence2/tasks", json=TASK, timeout=30)
        assert answer.status_code == 200 and "<OD>" in answer.json()["task"], answer.text


def test_a_body_that_arrives_in_time_is_served_and_the_option_is_checked(tiny_florence2):
    """A body sent in pieces, slower than one packet but within the timeout, is an ordinary request; the
    setting is validated and shown in the task table's limits."""
    settings = ServeSettings(max_batch_size=2, max_queue=4, max_new_tokens=8, body_timeout_s=3.0)
    payload = json.dumps(TASK).encode()
    with BackgroundServer(build_app(tiny_florence2, settings)) as server, \
            socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(f"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        for k in range(0, len(payload), len(payload) // 4 + 1):
            sock.sendall(payload[k: k + len(payload) // 4 + 1])
            time.sleep(0.3)
        head, body, _ = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200") and "<OD>" in body["task"], head
        limits = httpx.get(server.url + "/v1/florence2/tasks").json()["limits"]
        assert limits["body_timeout_s"] == 3.0
    for bad in (0, -1.0, float("nan")):
        try:
            ServeSettings(body_timeout_s=bad)
        except ValueError as error:
            assert "body_timeout_s" in str(error)
        else:
            raise AssertionError(f"body_timeout_s={bad} was accepted")


def test_headers_that_do_not_arrive_in_time_are_answered_408_and_closed(tiny_florence2):
    settings = ServeSettings(max_batch_size=2, max_queue=4, max_new_tokens=8, header_timeout_s=TIMEOUT)
    with BackgroundServer(build_app(tiny_florence2, settings)) as server:
        silent = socket.create_connection((server.host, server.port), timeout=30)  # connects, sends nothing
        trickle = socket.create_connection((server.host, server.port), timeout=30)
        started = time.monotonic()
        stop = threading.Event()

        def dribble():
            try:
                for byte in b"POST /v1/florence2/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 1000:
                    if stop.wait(0.1):
                        return
                    trickle.sendall(bytes([byte]))
            except OSError:
                pass

        threading.Thread(target=dribble, daemon=True).start()
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200  # others are served meanwhile
        for sock in (silent, trickle):
            head, body, closed = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 408") and body["error"]["code"] == "header_timeout", head
            assert TIMEOUT - 0.1 <= closed - started < TIMEOUT + 2.0, closed - started
        stop.set()
        # A keep-alive connection idle between requests for longer than the header timeout (but within
        # uvicorn's 5 s keep-alive) still works: the timer runs only while a request's headers are coming.
        with socket.create_connection((server.host, server.port), timeout=30) as sock:
            request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(request)
            assert one_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT + 0.5)
            sock.sendall(request)
            assert one_response(sock).startswith(b"HTTP/1.1 200")
        assert httpx.get(server.url + "/v1/florence2/tasks").json()["limits"]["header_timeout_s"] == TIMEOUT


def test_malformed_http_is_answered_in_the_json_error_shape(tiny_florence2):
    with BackgroundServer(build_app(tiny_florence2, ServeSettings())) as server:
        for payload in (b"GET /health\r\n\r\n", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40):
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                sock.sendall(payload)
                head, body, _ = read_answer(sock)
            assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower(), head
            assert body["error"]["code"] == "bad_http_request" and set(body["error"]) == {"message", "type", "code"}
