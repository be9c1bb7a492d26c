"""Issue 7, the server's safe defaults: `florence-vl serve` with no options binds 127.0.0.1, asks no key,
reads no local path, and never touches the network for an image URL (not even a DNS lookup)."""

from __future__ import annotations

import socket

import pytest
import uvicorn
from starlette.testclient import TestClient

from florence_vl import cli
from florence_vl.serve.server import _is_loopback, build_app
from florence_vl.serve.settings import ServeSettings
from test_serve_api import data_url, picture
from vl_tiny import tiny_vl

REMOTE = ["http://127.0.0.1:9/cat.png", "https://example.invalid/cat.png", "HTTPS://EXAMPLE.INVALID/x.png",
          "  http://10.0.0.1/cat.png", "ftp://example.invalid/cat.png", "http://[::1]:9/cat.png",
          "http://user:pw@example.invalid/cat.png", "https://169.254.169.254/latest/meta-data/"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def started(monkeypatch, tiny_florence2):
    """`florence-vl serve ARGS` up to uvicorn.run, which is caught: (app, uvicorn.run's keyword arguments)."""
    monkeypatch.delenv("FLORENCE_VL_API_KEY", raising=False)
    monkeypatch.setattr(cli, "_load_florence2", lambda args: tiny_florence2)
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))

    def start(*argv):
        assert cli.main(["serve", "--model", "tiny", "--vl-model", "none", "--port", str(free_port()), *argv]) == 0
        return calls.pop()

    return start


def test_no_options_binds_loopback_with_no_key_and_no_local_paths(started, capsys, tmp_path):
    app, kwargs = started()
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["http"].__name__ == "JsonErrorH11Protocol"  # malformed HTTP answered in the JSON shape too
    settings = app.state.settings
    assert settings.header_timeout_s == settings.body_timeout_s == 30.0  # slow clients are dropped
    assert settings.allow_dirs == () and settings.api_key is None
    assert "warning" not in capsys.readouterr().err
    picture().save(tmp_path / "photo.png")  # a real, readable image: still not read
    with TestClient(app, raise_server_exceptions=False) as client:
        def post(image):
            return client.post("/v1/florence2/tasks", json={"image": image, "task": "OD", "num_beams": 1,
                                                            "max_new_tokens": 4})

        assert post(data_url(picture())).status_code == 200  # images in the request work by default
        for path in (str(tmp_path / "photo.png"), "file://" + str(tmp_path / "photo.png"), "/etc/hostname",
                     "../../etc/passwd"):
            response = post(path)
            assert response.status_code in (400, 403), (path, response.text)
            assert response.json()["error"]["code"] in ("local_paths_off", "bad_image"), response.text
            assert "--allow-dir" in response.json()["error"]["message"]
        assert post("file://" + str(tmp_path / "photo.png")).json()["error"]["code"] == "local_paths_off"
        for url in REMOTE:
            assert post(url).json()["error"]["code"] == "remote_url_refused", url


def test_another_host_is_only_what_was_asked_and_warns_without_a_key(started, capsys):
    app, kwargs = started("--host", "0.0.0.0")
    assert kwargs["host"] == "0.0.0.0"
    assert "warning: listening on 0.0.0.0 with no --api-key" in capsys.readouterr().err
    started("--host", "0.0.0.0", "--api-key", "k")
    assert "warning" not in capsys.readouterr().err
    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""))


def test_image_urls_never_reach_the_network(monkeypatch, tiny_florence2):
    """Every remote URL form, on both endpoints, is refused with no connect and no DNS lookup at all."""
    vl = tiny_vl(tiny_florence2)
    network = []
    app = build_app(tiny_florence2, ServeSettings(chat_model_name="vl"), vl)
    with TestClient(app, raise_server_exceptions=False) as client:  # (in process: the client opens no socket)
        for name in ("getaddrinfo", "gethostbyname", "create_connection"):
            monkeypatch.setattr(socket, name, lambda *a, _n=name, **k: network.append((_n, a)) or 1 / 0)
        monkeypatch.setattr(socket.socket, "connect", lambda self, *a: network.append(("connect", a)) or 1 / 0)
        for url in REMOTE:
            task = client.post("/v1/florence2/tasks", json={"image": url, "task": "OD"})
            chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]})
            for response in (task, chat):
                assert response.status_code == 400 and response.json()["error"]["code"] == "remote_url_refused", \
                    (url, response.text)
        assert network == []
        with pytest.raises(ZeroDivisionError):  # the control: a fetch would have been seen
            __import__("urllib.request").request.urlopen("http://example.invalid/cat.png", timeout=1)
        assert [name for name, _ in network] in (["create_connection"], ["getaddrinfo"])
