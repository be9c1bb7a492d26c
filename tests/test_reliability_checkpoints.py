"""Issue 7, checkpoints: the gaps test_checkpoint.py leaves. A pickle that runs code is refused even with
allow_pickle (weights_only loading); garbage instead of JSON or safetensors, a missing shard, missing
tokenizer files: each one CheckpointError line, and one line from the CLI."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from florence_vl.cli import main
from florence_vl.errors import CheckpointError
from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "native", layout="native")


def _copy(native, tmp_path):
    return shutil.copytree(native, tmp_path / "copy")


def _refused(directory, *fragments, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_florence2(directory, **kwargs)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    return message


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_runs_code_is_refused_even_when_pickle_is_allowed(native, tmp_path, monkeypatch):
    import torch

    directory = _copy(native, tmp_path)
    (directory / "model.safetensors").unlink()
    torch.save({"weight": _RunsCode()}, directory / "pytorch_model.bin")
    monkeypatch.chdir(tmp_path)
    _refused(directory, "pytorch_model.bin", "allow_pickle=True")           # not allowed: never opened
    _refused(directory, "not a readable PyTorch weights file", allow_pickle=True)  # weights_only refuses it
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name,content,fragment", [
    ("config.json", b"{not json", "not readable JSON"),
    ("config.json", b"", "not readable JSON"),
    ("config.json", b"\xff\xfe\x00garbage", "not readable JSON"),
    ("model.safetensors", b"\xff" * 64, "not a readable safetensors file"),
    ("model.safetensors", b"", "not a readable safetensors file"),
    ("model.safetensors", (10**12).to_bytes(8, "little") + b"{}", "not a readable safetensors file"),
])
def test_garbage_files(native, tmp_path, name, content, fragment):
    directory = _copy(native, tmp_path)
    (directory / name).write_bytes(content)
    _refused(directory, fragment)


def test_missing_shard_and_missing_tokenizer(native, tmp_path):
    directory = _copy(native, tmp_path)
    (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    _refused(directory, "model-00002-of-00002.safetensors", "missing")
    other = _copy(native, tmp_path / "t")
    for name in ("tokenizer.json", "vocab.json"):
        if (other / name).exists():
            (other / name).unlink()
    _refused(other, "no tokenizer files")


def test_cli_bad_checkpoint_is_one_line(native, tmp_path, capsys):
    from PIL import Image

    directory = _copy(native, tmp_path)
    (directory / "model.safetensors").write_bytes(b"\0" * 10)
    image = tmp_path / "i.png"
    Image.new("RGB", (20, 20)).save(image)
    assert main(["tasks", str(image), "--task", "OD", "--model", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "safetensors" in err and "Traceback" not in err
