"""The command line: real runs on a tiny checkpoint, and one clean line for every user mistake."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from florence_vl.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from florence_vl.florence2.checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {layout: str(make_tiny_checkpoint(root / layout, layout=layout)) for layout in ("native", "original")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i, size in enumerate([(96, 64), (64, 80), (70, 70)]):
        Image.new("RGB", size, (50 * i, 200, 30)).save(root / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


FAST = ["--beams", "1", "--max-new-tokens", "12"]


def test_tasks_json_on_both_layouts(checkpoints, images, capsys):
    outputs = []
    for layout in ("native", "original"):
        assert main(["tasks", str(images / "img0.png"), "--task", "OD", "--model", checkpoints[layout], "--json",
                     *FAST]) == 0
        [record] = json.loads(capsys.readouterr().out)
        assert record["task"] == "<OD>" and record["image_size"] == [96, 64]
        assert set(record["result"]["<OD>"]) >= {"bboxes", "labels"}
        outputs.append(record["text"])
    assert outputs[0] == outputs[1]  # the same weights in either layout generate the same text


def test_tasks_text_output_and_drawing(checkpoints, images, tmp_path, capsys):
    draw = tmp_path / "out.png"
    code = main(["tasks", str(images / "img1.png"), str(images / "img2.png"), "--task", "REGION_TO_CATEGORY",
                 "--region", "1,2,30,40", "--model", checkpoints["native"], "--draw", str(draw), *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("<REGION_TO_CATEGORY>") == 2
    for name, size in (("img1", (64, 80)), ("img2", (70, 70))):
        with Image.open(tmp_path / f"out-{name}.png") as drawn:
            assert drawn.size == size  # drawn in the original image's frame


@pytest.mark.parametrize("fmt", ["json", "coco"])
def test_predict_writes_results(checkpoints, images, tmp_path, fmt):
    out = tmp_path / f"preds.{fmt}.json"
    assert main(["predict", "--task", "REGION_PROPOSAL", "--images", str(images), "--format", fmt,
                 "--out", str(out), "--model", checkpoints["native"], "--batch-size", "2", *FAST]) == 0
    data = json.loads(out.read_text())
    if fmt == "json":
        assert [Path(r["image"]).name for r in data] == ["img0.png", "img1.png", "img2.png"]
    else:
        assert isinstance(data, list)
        for ann in data:
            assert {"image_id", "category_id", "bbox", "score"} <= set(ann) and len(ann["bbox"]) == 4


def test_convert_original_to_native(checkpoints, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", checkpoints["original"], str(out)]) == 0
    assert (out / "model.safetensors").exists() and json.loads((out / "config.json").read_text())[
        "vision_config"]["model_type"] == "florence_vision"


@pytest.mark.parametrize("argv,message", [
    (["tasks", "missing.png", "--task", "OD"], "image not found"),
    (["tasks", "{images}/notes.txt", "--task", "OD"], "not an image"),
    (["tasks", "{images}/img0.png", "--task", "DETECT"], "unknown task"),
    (["tasks", "{images}/img0.png", "--task", "CAPTION_TO_PHRASE_GROUNDING"], "needs --text"),
    (["tasks", "{images}/img0.png", "--task", "REGION_TO_OCR", "--region", "5,5,1,1"], "empty"),
    (["tasks", "{images}/img0.png", "--task", "OD", "--model", "{images}/nowhere"], "does not exist"),
    (["tasks", "{images}/img0.png", "--task", "OD", "--batch-size", "0"], "batch-size"),
    (["predict", "--task", "CAPTION", "--images", "{images}", "--format", "coco", "--out", "x.json"], "coco"),
    (["predict", "--task", "OD", "--images", "{images}/nope", "--out", "x.json"], "not a directory"),
])
def test_user_mistakes_end_in_one_line(argv, message, images, checkpoints, capsys):
    argv = [a.format(images=images) for a in argv]
    if "--model" not in argv and argv[0] != "convert":
        argv += ["--model", checkpoints["native"]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_pickle_refused_without_flag(checkpoints, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoints["native"], pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    image = tmp_path / "i.png"
    Image.new("RGB", (40, 40)).save(image)
    assert main(["tasks", str(image), "--task", "OD", "--model", str(pickled), *FAST]) == 2
    assert "allow_pickle" in capsys.readouterr().err
    assert main(["tasks", str(image), "--task", "OD", "--model", str(pickled), "--allow-pickle", *FAST]) == 0


def test_entry_point_prints_one_line_not_a_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "florence_vl.cli", "tasks", str(tmp_path / "x.png"), "--task",
                           "OD"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"florence-vl tasks: error: image not found: {tmp_path / 'x.png'}"


def test_box_score_option_on_every_florence2_command(capsys):
    from florence_vl.cli import build_parser

    parser = build_parser()
    commands = [["tasks", "x.png", "--task", "OD"], ["predict", "--task", "OD", "--images", "d", "--out", "o"],
                ["eval", "florence2", "--data", "d"]]
    for command in commands:
        assert parser.parse_args(command).box_score == "label_x_loc"
        assert parser.parse_args(command + ["--box-score", "loc"]).box_score == "loc"
    with pytest.raises(SystemExit) as exit_:
        main(["tasks", "x.png", "--task", "OD", "--box-score", "mean"])
    assert exit_.value.code == 2
    assert "invalid choice: 'mean'" in capsys.readouterr().err


def test_eval_decodes_like_tasks_by_default():
    """`eval florence2` scores the decoding users get from `tasks` (3 beams, the published generation config);
    --beams 1 is greedy."""
    import inspect

    from florence_vl.cli import build_parser
    from florence_vl.eval.florence2_eval import evaluate_florence2

    parser = build_parser()
    assert parser.parse_args(["eval", "florence2", "--data", "d"]).beams == 3
    assert parser.parse_args(["tasks", "x.png", "--task", "OD"]).beams == 3
    assert parser.parse_args(["eval", "florence2", "--data", "d", "--beams", "1"]).beams == 1
    assert inspect.signature(evaluate_florence2).parameters["num_beams"].default == 3
