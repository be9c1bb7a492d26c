"""Florence-VL checkpoints: our own format round-trips; the published LLaVA layout (jiuhai/florence-vl-*)
loads faithfully from tiny state dicts written in exactly that layout; mistakes are one CheckpointError."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from florence_vl.errors import CheckpointError
from florence_vl.florence2.checkpoint import load_florence2, make_tiny_checkpoint
from florence_vl.vl.checkpoint import load_florence_vl
from florence_vl.vl.model import IMAGE_TOKEN_INDEX, FlorenceVLForCausalLM, VLConfig, pad_rows
from vl_tiny import llm_tokenizer, tiny_llm, tiny_vl


def logits(model, pixels):
    batch = pad_rows([[0, IMAGE_TOKEN_INDEX, 10, 11]], 2)
    with torch.no_grad():
        return model(**batch, pixel_values=pixels).logits


def test_own_format_round_trips(tiny_florence2, tmp_path):
    vl = tiny_vl(tiny_florence2, fusion="token", sources=["depth", "ocr"], template="llama3")
    vl.save_pretrained(tmp_path / "ckpt")
    again = load_florence_vl(tmp_path / "ckpt")
    assert again.layout == "florence-vl"
    assert again.model.config.fusion == "token" and again.model.config.sources == ["depth", "ocr"]
    assert again.model.config.template == "llama3"
    pixels = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(logits(again.model, pixels), logits(vl.model, pixels))
    assert again.tokenizer.get_vocab() == vl.tokenizer.get_vocab()
    half = load_florence_vl(tmp_path / "ckpt", dtype="bfloat16").model
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits(half, pixels).float()).all()  # (random spread weights amplify bf16 rounding)


def test_own_format_stored_in_bf16_loads_in_the_saved_dtype(tiny_florence2, tmp_path):
    vl = tiny_vl(tiny_florence2)
    full = vl.save_pretrained(tmp_path / "fp32")
    small = vl.save_pretrained(tmp_path / "bf16", storage_dtype="bfloat16")
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*.safetensors"))
    assert size(small) < 0.6 * size(full)
    again = load_florence_vl(small).model
    assert {p.dtype for p in again.parameters()} == {torch.float32}       # computes in fp32, as saved
    for name, value in vl.model.state_dict().items():                     # the weights are bf16-rounded fp32
        torch.testing.assert_close(again.state_dict()[name], value.bfloat16().float(), rtol=0, atol=0)
    assert {p.dtype for p in load_florence_vl(small, dtype="bfloat16").model.parameters()} == {torch.bfloat16}


def _published(tmp_path, kind="phi3", tie=False):
    """A tiny checkpoint in the jiuhai/florence-vl layout: LLaVA config, LLM + projector weights, original
    Florence-2 layout in vision_tower/."""
    out = tmp_path / f"florence-vl-{kind}"
    out.mkdir()
    make_tiny_checkpoint(out / "vision_tower", layout="original", seed=1)
    vision = load_florence2(out / "vision_tower")
    tokenizer = llm_tokenizer()
    llm = tiny_llm(kind, tokenizer, seed=2)
    reference = FlorenceVLForCausalLM(vision.model, vision.tokenizer, 5, llm, VLConfig()).eval()
    with torch.no_grad():
        for p in reference.mm_projector.parameters():
            p.normal_(0, 0.3)
    sd = {k: v.clone() for k, v in llm.state_dict().items()}
    sd.update({"model.mm_projector." + k: v.clone() for k, v in reference.mm_projector.state_dict().items()})
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in sd.items() if "layers.1." not in k},
              "model-00002-of-00002.safetensors": {k: v for k, v in sd.items() if "layers.1." in k}}
    for name, part in shards.items():
        save_file(part, str(out / name))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    config = llm.config.to_dict()
    config.update({"model_type": "llava_phi" if kind == "phi3" else "llava_llama",
                   "architectures": ["LlavaPhiForCausalLM" if kind == "phi3" else "LlavaLlamaForCausalLM"],
                   "mm_hidden_size": 32, "mm_projector_type": "mlp3x_gelu", "mm_vision_tower": "microsoft/Florence-2-large",
                   "mm_vision_select_layer": -2, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
                   "image_aspect_ratio": "pad", "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
                   "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "use_mm_proj": True})
    (out / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(str(out))
    return out, reference


@pytest.mark.parametrize("kind,template", [("phi3", "phi3"), ("llama", "llama3")])
def test_published_layout_loads_faithfully(tmp_path, kind, template):
    path, reference = _published(tmp_path, kind)
    bundle = load_florence_vl(path)
    assert bundle.layout == "llava"
    model = bundle.model
    assert type(model.llm).__name__ == ("Phi3ForCausalLM" if kind == "phi3" else "LlamaForCausalLM")
    assert model.config.template == template and model.config.fusion == "channel"
    assert model.config.sources == ["depth", "caption", "ocr", "grounding"]
    pixels = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(logits(model, pixels), logits(reference, pixels))
    # then round-trips through our own format
    from florence_vl.vl.checkpoint import save_florence_vl

    save_florence_vl(bundle, tmp_path / "own")
    torch.testing.assert_close(logits(load_florence_vl(tmp_path / "own").model, pixels), logits(reference, pixels))


def test_published_layout_mistakes_are_one_clear_error(tmp_path):
    path, _ = _published(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(dict(config, mm_hidden_size=64)))
    with pytest.raises(CheckpointError, match="mm_hidden_size 64"):
        load_florence_vl(path)
    (path / "config.json").write_text(json.dumps(dict(config, mm_projector_type="mlp2x_gelu")))
    with pytest.raises(CheckpointError, match="projector"):
        load_florence_vl(path)
    (path / "config.json").write_text(json.dumps(dict(config, num_hidden_layers=3)))
    with pytest.raises(CheckpointError, match="LLM weights do not match"):
        load_florence_vl(path)
    (path / "config.json").write_text(json.dumps(dict(config, model_type="llava_gpt9")))
    with pytest.raises(CheckpointError, match="llava_gpt9"):
        load_florence_vl(path)
    (path / "config.json").write_text(json.dumps(config))
    shard = path / "model-00002-of-00002.safetensors"
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_florence_vl(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_florence_vl(tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not Florence-VL"):
        load_florence_vl(tmp_path / "other")


def test_chat_api_stream_and_batch(tiny_florence2, tmp_path):
    vl = tiny_vl(tiny_florence2)
    image = Image.new("RGB", (80, 50), (200, 30, 30))
    answer = vl.chat(image, "How many shapes are there?", max_new_tokens=8)
    streamed = "".join(vl.chat(image, "How many shapes are there?", max_new_tokens=8, stream=True))
    assert answer and streamed.strip() == answer
    other = Image.new("RGB", (60, 60), (10, 10, 240))
    batch = vl.answer([image, other], ["How many shapes are there?", "What color is the star?"], max_new_tokens=8)
    assert batch[0] == answer
    assert batch[1] == vl.chat(other, "What color is the star?", max_new_tokens=8)
    again = vl.chat(image, "What color is the star?", history=[("How many shapes are there?", answer)],
                    max_new_tokens=4)
    assert isinstance(again, str)


def test_pad_to_square_uses_the_mean_colour(tiny_florence2):
    from florence_vl.vl.processor import expand_to_square

    vl = tiny_vl(tiny_florence2)
    assert vl.processor.mean_color == (124, 116, 104)
    square = expand_to_square(Image.new("RGB", (40, 20), (255, 0, 0)), vl.processor.mean_color)
    assert square.size == (40, 40) and square.getpixel((0, 0)) == (124, 116, 104)
    assert square.getpixel((20, 20)) == (255, 0, 0)
