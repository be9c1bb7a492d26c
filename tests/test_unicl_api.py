"""UniCLModel (zero-shot classification, retrieval) and the `classify` / `eval unicl` commands."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from florence_vl.cli import main
from florence_vl.florence.api import UniCLModel
from florence_vl.florence.checkpoint import save_unicl
from florence_vl.florence.model import UniCL, UniCLConfig
from florence_vl.models import NANO_ROOT

TINY_VISION = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 2, 4, 8], num_groups=[1, 2, 4, 8],
                   window_size=2, drop_path_rate=0.0, projection_dim=32)


@pytest.fixture(scope="module")
def tiny_dir(tiny_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    config = UniCLConfig(vision=dict(TINY_VISION), image_size=32, vocab_size=-(-len(tiny_tokenizer) // 64) * 64,
                         text_width=32, text_layers=1, text_heads=2, max_len=16,
                         pad_token_id=tiny_tokenizer.pad_token_id, embed_dim=32)
    return save_unicl(UniCL(config).eval(), tiny_tokenizer, tmp_path_factory.mktemp("unicl") / "model")


@pytest.fixture()
def color_oracle(tiny_dir, monkeypatch):
    """A UniCL whose towers are perfect at 'red' vs 'blue': images by their mean color, texts by the word."""
    unicl = UniCLModel.from_pretrained(tiny_dir)

    def encode_image(pixel_values):
        red_minus_blue = pixel_values[:, 0].mean(dim=(1, 2)) - pixel_values[:, 2].mean(dim=(1, 2))
        return F.one_hot((red_minus_blue < 0).long(), 2).float()

    def encode_text(input_ids, attention_mask):
        texts = unicl.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        return F.one_hot(torch.tensor([int("blue" in t) for t in texts]), 2).float()

    monkeypatch.setattr(unicl.model, "encode_image", encode_image)
    monkeypatch.setattr(unicl.model, "encode_text", encode_text)
    return unicl


def solid(color):
    return Image.new("RGB", (40, 30), color)


def test_classify_picks_the_matching_label_with_a_confident_score(color_oracle):
    results = color_oracle.classify([solid("red"), solid("blue"), solid((250, 10, 10))], ["red circle", "blue square"])
    assert [r["label"] for r in results] == ["red circle", "blue square", "red circle"]
    for r in results:
        assert r["score"] > 0.9 and sum(r["scores"].values()) == pytest.approx(1.0)


def test_rank_images_and_texts_put_the_match_first(color_oracle):
    ranked = color_oracle.rank_images("a blue shape", [solid("red"), solid("blue"), solid("red")])
    assert ranked[0] == (1, pytest.approx(1.0)) and sorted(i for i, _ in ranked) == [0, 1, 2]
    assert color_oracle.rank_texts(solid("red"), ["a blue one", "a red one"])[0][0] == 1


@pytest.mark.parametrize("labels", [["red"], ["red", ""], ["red", "red"]])
def test_classify_refuses_unusable_labels(color_oracle, labels):
    from florence_vl.errors import InputError

    with pytest.raises(InputError):
        color_oracle.classify([solid("red")], labels)


def test_classify_command_prints_one_ranked_line_per_image(tiny_dir, tmp_path, capsys):
    for name, color in (("r.png", "red"), ("b.png", "blue")):
        solid(color).save(tmp_path / name)
    code = main(["classify", str(tmp_path / "r.png"), str(tmp_path / "b.png"), "--labels", "red circle, blue square",
                 "--model", str(tiny_dir), "--top", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'r.png'}: ") and "red circle" in lines[0] and "blue square" in lines[0]


def test_classify_command_mistakes_are_one_line(tiny_dir, tmp_path, capsys):
    solid("red").save(tmp_path / "r.png")
    assert main(["classify", str(tmp_path / "r.png"), "--labels", "only one", "--model", str(tiny_dir)]) == 2
    assert main(["classify", str(tmp_path / "missing.png"), "--labels", "a,b", "--model", str(tiny_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("florence-vl classify: error:") for line in err)


def test_eval_unicl_prints_a_table_and_writes_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "unicl.json"
    assert main(["eval", "unicl", "--model", str(tiny_dir), "--split", "test-novel", "--n", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "zero-shot shape accuracy (8-way)" in printed and "text->image recall@5" in printed
    result = json.loads(out.read_text())
    assert result["split"] == "test-novel" and result["scenes"] == 3
    assert 0.0 <= result["shape_acc"] <= 1.0 and result["i2t_r5"] >= result["i2t_r1"]


@pytest.mark.skipif(not (NANO_ROOT / "unicl" / "config.json").exists(), reason="the nano UniCL is not shipped")
def test_shipped_nano_unicl_beats_chance_on_the_test_split():
    from florence_vl.florence.zeroshot import evaluate_zero_shot

    unicl = UniCLModel.from_pretrained("nano")
    result = evaluate_zero_shot(unicl.model, unicl.tokenizer, "test", n=40)
    assert result["shape_acc"] > 0.25          # 8-way: chance is 0.125 (the shipped model: ~0.43 on 200 scenes)
    assert result["color_shape_acc"] > 0.15    # 64-way: chance is 0.016
