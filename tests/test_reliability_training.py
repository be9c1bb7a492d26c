"""Issue 7, training faults: kill -9 in the middle of a checkpoint save, and a disk that fills up while
saving. Either way the last good checkpoint survives and the resumed run repeats the uninterrupted loss
sequence exactly (same seed, data order a function of the step, optimizer and RNG state restored)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import florence_vl.train.loop as loop
from florence_vl.train.florence2 import florence2_loss
from reliability_train_child import STEPS, config, fresh, load_tokenizer

CHILD = Path(__file__).with_name("reliability_train_child.py")


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))  # what the child process uses, so both see the same ids


@pytest.fixture(scope="module")
def straight(tokenizer, tmp_path_factory):
    model, batches = fresh(tokenizer)
    return loop.train(model, batches, florence2_loss, config(), tmp_path_factory.mktemp("straight"), progress=False)


def _losses(records):
    return [r["loss"] for r in records]


def _checkpoint_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_kill_9_mid_save_then_resume_repeats_the_loss_sequence(tokenizer_dir, tokenizer, straight, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(CHILD.parent), str(Path.cwd())]))
    proc = subprocess.run([sys.executable, str(CHILD), str(tokenizer_dir), str(out), "4",
                           str(torch.get_num_threads())], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = _checkpoint_dirs(out)
    assert "step-2" in leftovers and "step-4" not in leftovers
    assert any(name.startswith(".tmp-step-4-") for name in leftovers)  # the half-written save it died in
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]

    model, batches = fresh(tokenizer)  # a new process: fresh model, then the checkpoint of step 2
    resumed = loop.train(model, batches, florence2_loss, config(), out, progress=False)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    assert not [n for n in _checkpoint_dirs(out) if n.startswith(".tmp")]  # the dead run's partial save is gone
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))


def test_out_of_disk_while_saving_keeps_the_last_good_checkpoint(tokenizer, straight, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save_state = loop.Accelerator.save_state

    def disk_full_at_step_4(self, output_dir, **kwargs):
        if "step-4-" not in str(output_dir):
            return save_state(self, output_dir, **kwargs)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:  # some bytes, then no room
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(output_dir, "model.safetensors"))

    monkeypatch.setattr(loop.Accelerator, "save_state", disk_full_at_step_4)
    model, batches = fresh(tokenizer)
    with pytest.raises(OSError) as info:
        loop.train(model, batches, florence2_loss, config(), out, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith("[Errno 28] could not save the step-4 checkpoint (No space left on device); "
                                      f"the last good checkpoint, {out / 'checkpoints' / 'step-2'}, is intact")
    assert _checkpoint_dirs(out) == ["step-2"]  # the partial folder is removed; step 2 untouched

    monkeypatch.setattr(loop.Accelerator, "save_state", save_state)  # room again: run it once more
    model, batches = fresh(tokenizer)
    resumed = loop.train(model, batches, florence2_loss, config(), out, progress=False)
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-5)
    assert _checkpoint_dirs(out) == ["step-4", "step-6"]


def test_cli_train_out_of_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from florence_vl.cli import main

    recipe = {"out_dir": str(tmp_path / "run"), "geometry": "tiny", "tokenizer_vocab": 400, "tokenizer_scenes": 10,
              "images_per_step": 1, "tasks_per_image": 1, "max_target_tokens": 16,
              "loop": {"steps": 1, "save_every": 1, "precision": "no", "warmup_steps": 1}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    def disk_full(self, output_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))

    monkeypatch.setattr(loop.Accelerator, "save_state", disk_full)
    assert main(["train", "florence2", str(tmp_path / "recipe.yaml")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and any(line.startswith(
        "florence-vl train: error: [Errno 28] could not save the step-1 checkpoint (No space left on device); "
        "there is no earlier checkpoint") for line in err.splitlines())  # the bar's line is ended first
