"""A request the server answers before reading all of it (413 body_too_large, 408, 400) is closed lingering
(florence_vl/serve/protocol.py): the client reads the whole answer and then the end of the stream, and what it
still sends is dropped instead of answered with a reset. Without it, a client that sends its whole body before
reading (urllib here; requests, curl without Expect: 100-continue) failed with a broken pipe for a 10 MB upload
and never saw the 413. Raw sockets and urllib on a real uvicorn server (127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from florence_vl.serve import protocol
from florence_vl.serve.server import BackgroundServer, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_slow_body import read_answer

BIG = 16 * 1024 * 1024


@pytest.fixture
def small_limit_server(tiny_florence2, monkeypatch):
    monkeypatch.setattr(protocol, "LINGER_IDLE_S", 0.5)
    monkeypatch.setattr(protocol, "LINGER_MAX_S", 1.5)
    settings = ServeSettings(max_batch_size=2, max_queue=4, max_new_tokens=8, max_body_bytes=30_000)
    with BackgroundServer(build_app(tiny_florence2, settings)) as server:
        yield server


def open_connections(server) -> int:
    return len(server.server.server_state.connections)


def wait_until(condition, within: float) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s")
        time.sleep(0.02)
    return time.monotonic() - start


def chunks(body: bytes, size: int = 65536) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_big_upload_sent_whole_before_reading_gets_the_413(small_limit_server, framing):
    body = b"{" + b"a" * BIG
    request = urllib.request.Request(small_limit_server.url + "/v1/florence2/tasks", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=body if framing == "content-length" else iter(chunks(body)))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)  # sends all 16 MB, then reads: a reset would be a URLError
    assert refused.value.code == 413
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == "body_too_large" and "30000 bytes" in error["message"], error


def test_the_answer_ends_at_once_and_the_connection_closes_when_the_client_stops(small_limit_server):
    server = small_limit_server
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /v1/florence2/tasks HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n" % BIG + b"a" * 100_000)
    start = time.monotonic()
    head, body, closed = read_answer(sock)  # the FIN comes right after the answer: no waiting for the linger
    assert closed - start < 0.4
    assert head.startswith(b"HTTP/1.1 413") and body["error"]["code"] == "body_too_large"
    assert open_connections(server) == 1  # still lingering: what the client sends now is dropped, not reset
    sock.sendall(b"a" * 1_000_000)
    took = wait_until(lambda: open_connections(server) == 0, within=3.0)
    assert 0.3 < took < 1.5, took  # closed LINGER_IDLE_S (0.5 s) after the client's last bytes
    sock.close()


def test_a_client_that_keeps_sending_is_cut_off_after_the_linger_limit(small_limit_server):
    server = small_limit_server
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"POST /v1/florence2/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % BIG)
    sent, stop = [0], threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                sock.sendall(b"a" * 1000)
            except OSError:
                return  # the server closed for good: what comes now is reset
            sent[0] += 1
            time.sleep(0.1)

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    assert read_answer(sock)[0].startswith(b"HTTP/1.1 413")
    took = wait_until(lambda: open_connections(server) == 0, within=5.0)
    stop.set()
    sender.join(timeout=5)
    assert took < 2.5, took  # LINGER_MAX_S (1.5 s), though bytes came every 0.1 s
    assert sent[0] >= 10
    sock.close()


def test_connections_with_nothing_unread_close_without_lingering(small_limit_server):
    server = small_limit_server
    sock = socket.create_connection((server.host, server.port))
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert read_answer(sock)[0].startswith(b"HTTP/1.1 200")
    assert wait_until(lambda: open_connections(server) == 0, within=1.0) < 0.3
    sock.close()


def test_bytes_after_a_malformed_request_are_dropped_and_the_400_is_read(small_limit_server):
    sock = socket.create_connection((small_limit_server.host, small_limit_server.port))
    sock.sendall(b"POST /v1/florence2/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"
                 + b"a" * 2_000_000)
    head, body, _ = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 400") and body["error"]["code"] == "bad_http_request"
    sock.close()
