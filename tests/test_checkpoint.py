"""Florence-2 checkpoints: both published layouts load into the native model and agree bit for bit."""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Florence2ForConditionalGeneration

from florence_vl.errors import CheckpointError
from florence_vl.florence2.checkpoint import (
    convert_checkpoint,
    detect_layout,
    load_florence2,
    make_tiny_checkpoint,
    native_to_original_config,
    native_to_original_state_dict,
    original_to_native_config,
    original_to_native_state_dict,
)
from florence_vl.florence2.geometry import PRESETS

TINY = PRESETS["tiny"]
DEPTHS = TINY["vision"]["depths"]
PROMPT = "Describe in detail what is shown in the image."


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("florence2_ckpt")
    return {layout: make_tiny_checkpoint(root / layout, layout=layout, seed=0) for layout in ("native", "original")}


@pytest.fixture(scope="module")
def bundles(dirs):
    return {layout: load_florence2(path) for layout, path in dirs.items()}


@pytest.fixture(scope="module")
def original_vocab(bundles):
    return bundles["original"].model.config.image_token_id


def _inputs(bundle):
    pixels = (np.arange(64 * 64 * 3).reshape(64, 64, 3) * 7 % 251).astype(np.uint8)
    pixel_values = bundle.image_processor(Image.fromarray(pixels), return_tensors="pt").pixel_values
    ids = [bundle.tokenizer.image_token_id] * bundle.num_image_tokens + bundle.tokenizer(PROMPT).input_ids
    return dict(input_ids=torch.tensor([ids]), pixel_values=pixel_values, decoder_input_ids=torch.tensor([[2, 0, 9, 17]]))


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _copy(src, tmp_path, name="ckpt"):
    return shutil.copytree(src, tmp_path / name)


def _edit_weights(directory, edit):
    sd = load_file(str(directory / "model.safetensors"))
    edit(sd)
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _expect(directory, *fragments, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load_florence2(directory, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------ both layouts agree


def test_same_seed_both_layouts_give_identical_logits(bundles, original_vocab):
    native, original = bundles["native"], bundles["original"]
    assert (native.layout, original.layout) == ("native", "original")
    assert native.tokenizer.image_token_id == original.tokenizer.image_token_id == original_vocab
    assert len(native.tokenizer) == len(original.tokenizer) == original_vocab + 1
    rows = native.model.config.text_config.vocab_size
    assert rows == original.model.config.text_config.vocab_size and rows % 64 == 0 and rows > original_vocab
    inputs = _inputs(native)
    assert torch.equal(inputs["input_ids"], _inputs(original)["input_ids"])
    a, b = _logits(native.model, inputs), _logits(original.model, inputs)
    assert a.shape == (1, 4, rows) and torch.isfinite(a).all() and a.std() > 0
    assert torch.equal(a[..., :original_vocab], b[..., :original_vocab])


def test_loaded_model_is_complete_and_in_eval_mode(bundles):
    for bundle in bundles.values():
        model = bundle.model
        assert not model.training
        tensors = list(model.parameters()) + list(model.buffers())
        assert not any(t.is_meta for t in tensors)
        assert {t.dtype for t in tensors} == {torch.float32}
        shared = model.model.language_model.shared.weight
        assert model.lm_head.weight is shared
        assert model.model.language_model.encoder.embed_tokens.weight is shared
        assert bundle.image_processor.image_seq_length == bundle.num_image_tokens == 5


def test_new_vocabulary_rows_are_the_mean_embedding(bundles, original_vocab):
    shared = bundles["original"].model.model.language_model.shared.weight
    mean = shared[:original_vocab].mean(0)
    assert torch.allclose(shared[original_vocab:], mean.expand_as(shared[original_vocab:]))


def test_dtype_casts_floating_weights(dirs):
    bundle = load_florence2(dirs["original"], dtype="bfloat16")
    assert {p.dtype for p in bundle.model.parameters()} == {torch.bfloat16}
    assert bundle.model.config.dtype == torch.bfloat16
    assert bundle.model.model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ original layout on disk


def _published_pairs(depths):
    """(microsoft name, transformers name) of every DaViT parameter, spelled out independently of the module."""
    pairs = []
    for s, depth in enumerate(depths):
        for p in ("weight", "bias"):
            pairs += [(f"vision_tower.convs.{s}.proj.{p}", f"model.vision_tower.convs.{s}.conv.{p}"),
                      (f"vision_tower.convs.{s}.norm.{p}", f"model.vision_tower.convs.{s}.norm.{p}")]
        for b in range(depth):
            for block, attn in (("spatial_block", "window_attn"), ("channel_block", "channel_attn")):
                old, new = f"vision_tower.blocks.{s}.{b}.{block}", f"model.vision_tower.blocks.{s}.{b}.{block}"
                for o, n in (("conv1.fn.dw", "conv1"), (f"{attn}.norm", "norm1"), (f"{attn}.fn.qkv", f"{attn}.qkv"),
                             (f"{attn}.fn.proj", f"{attn}.proj"), ("conv2.fn.dw", "conv2"), ("ffn.norm", "norm2"),
                             ("ffn.fn.net.fc1", "ffn.fc1"), ("ffn.fn.net.fc2", "ffn.fc2")):
                    pairs += [(f"{old}.{o}.{p}", f"{new}.{n}.{p}") for p in ("weight", "bias")]
    return pairs


def test_original_weights_sit_under_the_published_names(dirs):
    """Each tensor of the original file equals the native tensor the published mapping names."""
    original = load_file(str(dirs["original"] / "model.safetensors"))
    native = load_file(str(dirs["native"] / "model.safetensors"))
    pairs = _published_pairs(DEPTHS) + [
        ("image_proj_norm.weight", "model.multi_modal_projector.image_proj_norm.weight"),
        ("image_proj_norm.bias", "model.multi_modal_projector.image_proj_norm.bias"),
        ("image_pos_embed.row_embeddings.weight", "model.multi_modal_projector.image_position_embed.row_embeddings.weight"),
        ("image_pos_embed.column_embeddings.weight",
         "model.multi_modal_projector.image_position_embed.column_embeddings.weight"),
        ("visual_temporal_embed.pos_idx_to_embed", "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed"),
    ]
    pairs += [("language_model.model." + k[len("model.language_model."):], k)
              for k in native if k.startswith("model.language_model.") and "shared" not in k]
    vocab = original["language_model.model.shared.weight"].shape[0]
    assert len({o for o, _ in pairs}) == len(pairs) == len(original) - 4  # + projection, shared, lm_head, bias
    for o, n in pairs:
        assert torch.equal(original[o], native[n]), (o, n)
    assert torch.equal(original["image_projection"], native["model.multi_modal_projector.image_projection.weight"].t())
    assert torch.equal(original["language_model.model.shared.weight"], native["model.language_model.shared.weight"][:vocab])
    assert torch.equal(original["language_model.lm_head.weight"], original["language_model.model.shared.weight"])


def test_original_layout_uses_the_published_names(dirs, bundles, original_vocab):
    sd = load_file(str(dirs["original"] / "model.safetensors"))
    embed, projection = TINY["vision"]["embed_dim"][-1], TINY["vision"]["projection_dim"]
    assert {k for k in sd if k.startswith("vision_tower.")} == {o for o, _ in _published_pairs(DEPTHS)}
    assert not any(k.startswith("model.") for k in sd)
    assert sd["image_projection"].shape == (embed, projection)
    assert {"image_proj_norm.weight", "image_pos_embed.row_embeddings.weight", "image_pos_embed.column_embeddings.weight",
            "visual_temporal_embed.pos_idx_to_embed", "language_model.model.encoder.layers.0.fc1.weight"} <= set(sd)
    assert sd["language_model.lm_head.weight"].shape == (original_vocab, TINY["text"]["d_model"])
    assert sd["language_model.model.shared.weight"].shape[0] == original_vocab
    assert torch.equal(sd["language_model.final_logits_bias"], torch.zeros(1, original_vocab))

    config = json.loads((dirs["original"] / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "davit" and config["text_config"]["model_type"] == "florence2_language"
    assert config["vocab_size"] == config["text_config"]["vocab_size"] == original_vocab
    assert "auto_map" in config and detect_layout(config) == "original"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        text = (dirs["original"] / name).read_text()
        assert "<image>" not in text and "<loc_" not in text and "<od>" not in text, name
    pre = json.loads((dirs["original"] / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "CLIPImageProcessor" and pre["processor_class"] == "Florence2Processor"
    assert pre["image_seq_length"] == 5 and pre["size"] == {"height": 64, "width": 64} and pre["resample"] == 3

    native = load_file(str(dirs["native"] / "model.safetensors"))
    assert native["model.multi_modal_projector.image_projection.weight"].shape == (projection, embed)
    assert detect_layout(json.loads((dirs["native"] / "config.json").read_text())) == "native"


def test_image_projection_keeps_its_meaning(dirs, bundles):
    original = load_file(str(dirs["original"] / "model.safetensors"))["image_projection"]
    linear = bundles["original"].model.model.multi_modal_projector.image_projection
    x = torch.randn(3, original.shape[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(x @ original, linear(x), atol=1e-6)


def test_state_dict_round_trip_is_exact(dirs, bundles):
    sd = load_file(str(dirs["original"] / "model.safetensors"))
    native = original_to_native_state_dict(sd, DEPTHS)
    expected = set(bundles["original"].model.state_dict()) - {
        "model.language_model.encoder.embed_tokens.weight", "model.language_model.decoder.embed_tokens.weight"}
    assert set(native) == expected
    back = native_to_original_state_dict(native, DEPTHS)
    assert set(back) == set(sd)
    for key, tensor in sd.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


def test_nonzero_final_logits_bias_is_refused():
    sd = {"language_model.final_logits_bias": torch.ones(1, 10), "language_model.lm_head.weight": torch.zeros(10, 4)}
    with pytest.raises(CheckpointError, match="final_logits_bias"):
        original_to_native_state_dict(sd, DEPTHS)


def test_config_round_trip(bundles, original_vocab):
    config = bundles["native"].model.config
    original = native_to_original_config(config)
    again = original_to_native_config(original, config.image_token_id, config.text_config.vocab_size)
    for name in ("depths", "embed_dim", "num_heads", "num_groups", "patch_size", "patch_stride", "patch_padding",
                 "patch_prenorm", "window_size", "projection_dim", "max_temporal_embeddings", "max_position_embeddings"):
        assert list(np.atleast_1d(getattr(again.vision_config, name))) == \
            list(np.atleast_1d(getattr(config.vision_config, name))), name
    for name in ("d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "max_position_embeddings",
                 "vocab_size", "decoder_start_token_id", "scale_embedding", "activation_function"):
        assert getattr(again.text_config, name) == getattr(config.text_config, name), name
    assert again.image_token_id == config.image_token_id and original["vocab_size"] == original_vocab


def test_unsupported_original_variant_is_refused(dirs):
    config = json.loads((dirs["original"] / "config.json").read_text())
    config["vision_config"]["image_feature_source"] = ["last_frame"]
    with pytest.raises(CheckpointError, match="image_feature_source"):
        original_to_native_config(config, 5, 64)


# ------------------------------------------------------------------------------------------ conversion


def test_convert_original_to_native(dirs, bundles, original_vocab, tmp_path):
    out = convert_checkpoint(dirs["original"], tmp_path / "converted")
    keys = load_file(str(out / "model.safetensors"))
    assert "model.multi_modal_projector.image_projection.weight" in keys and "image_projection" not in keys
    inputs = _inputs(bundles["original"])
    reference = _logits(bundles["original"].model, inputs)

    plain = Florence2ForConditionalGeneration.from_pretrained(out).eval()
    assert torch.equal(_logits(plain, inputs), reference)
    again = load_florence2(out)
    assert again.layout == "native" and again.tokenizer.image_token_id == original_vocab
    assert torch.equal(_logits(again.model, _inputs(again)), reference)
    assert again.model.generation_config.num_beams == bundles["original"].model.generation_config.num_beams == 3


def test_sharded_safetensors_load(dirs, bundles, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    sd = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: sd[k] for k in names}, str(directory / name))
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    bundle = load_florence2(directory)
    inputs = _inputs(bundle)
    assert torch.equal(_logits(bundle.model, inputs), _logits(bundles["original"].model, inputs))


# ------------------------------------------------------------------------------------------ clear errors


def test_missing_directory(tmp_path):
    _expect(tmp_path / "nowhere", "does not exist")


def test_missing_config(dirs, tmp_path):
    directory = _copy(dirs["native"], tmp_path)
    (directory / "config.json").unlink()
    _expect(directory, "config.json")


def test_missing_weights(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    (directory / "model.safetensors").unlink()
    _expect(directory, "no weights", "model.safetensors")


def test_truncated_safetensors(dirs, tmp_path):
    directory = _copy(dirs["native"], tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _expect(directory, "model.safetensors", "truncated or corrupt")


def test_wrong_shape_names_key_and_shapes(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    key = "language_model.model.encoder.layers.0.fc1.weight"
    _edit_weights(directory, lambda sd: sd.__setitem__(key, torch.zeros(3, 5)))
    _expect(directory, key, "[3, 5]", f"[{TINY['text']['encoder_ffn_dim']}, {TINY['text']['d_model']}]")


def test_wrong_shape_native(dirs, tmp_path):
    directory = _copy(dirs["native"], tmp_path)
    key = "model.multi_modal_projector.image_projection.weight"
    _edit_weights(directory, lambda sd: sd.__setitem__(key, sd[key].t().contiguous()))
    _expect(directory, key, "expected [32, 64]")


def test_unknown_key(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    _edit_weights(directory, lambda sd: sd.__setitem__("vision_tower.norms.weight", torch.ones(64)))
    _expect(directory, "unexpected", "vision_tower.norms.weight")


def test_missing_key(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    _edit_weights(directory, lambda sd: sd.pop("image_proj_norm.weight"))
    _expect(directory, "missing", "image_proj_norm.weight")


def test_missing_word_embedding(dirs, tmp_path):
    directory = _copy(dirs["native"], tmp_path)
    _edit_weights(directory, lambda sd: sd.pop("model.language_model.shared.weight"))
    _expect(directory, "missing", "model.language_model.shared.weight")


def test_untied_lm_head_is_refused(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    key = "language_model.lm_head.weight"
    _edit_weights(directory, lambda sd: sd.__setitem__(key, sd[key] + 1))
    _expect(directory, "lm_head", "ties")


def test_wrong_architecture(dirs, tmp_path):
    directory = _copy(dirs["native"], tmp_path)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    _expect(directory, "'llama'", "not Florence-2")


def test_detect_layout_rejects_unknown_florence2_config():
    with pytest.raises(CheckpointError, match="neither known layout"):
        detect_layout({"model_type": "florence2", "vision_config": {"model_type": "clip"}, "text_config": {}})


@pytest.fixture()
def pickle_dir(dirs, tmp_path):
    directory = _copy(dirs["original"], tmp_path)
    sd = load_file(str(directory / "model.safetensors"))
    # As torch.save writes a real remote-code model: every tied name present, one storage.
    for key in ("language_model.model.encoder.embed_tokens.weight", "language_model.model.decoder.embed_tokens.weight",
                "language_model.lm_head.weight"):
        sd[key] = sd["language_model.model.shared.weight"]
    (directory / "model.safetensors").unlink()
    torch.save(sd, directory / "pytorch_model.bin")
    return directory


def test_pickle_needs_allow_pickle(pickle_dir):
    _expect(pickle_dir, "pytorch_model.bin", "pickle checkpoints can run code", "allow_pickle=True", "--allow-pickle")


def test_pickle_with_allow_pickle_loads_and_matches(pickle_dir, bundles, original_vocab):
    bundle = load_florence2(pickle_dir, allow_pickle=True)
    inputs = _inputs(bundle)
    assert torch.equal(_logits(bundle.model, inputs), _logits(bundles["original"].model, inputs))


def test_unknown_hub_id_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = _expect("nonexistent-org/nonexistent-model", "nonexistent-org/nonexistent-model", "Hugging Face Hub")
    assert "offline" in message


def test_bf16_storage_loads_back_in_the_config_dtype(tmp_path):
    """store_as halves the bytes; loading computes in config.json's dtype (fp32) with the bf16-rounded weights."""
    from florence_vl.florence2.checkpoint import store_as

    src = make_tiny_checkpoint(tmp_path / "fp32", seed=1)
    dst = tmp_path / "bf16"
    shutil.copytree(src, dst)
    store_as(dst / "model.safetensors", torch.bfloat16)
    assert (dst / "model.safetensors").stat().st_size < 0.55 * (src / "model.safetensors").stat().st_size
    full, stored = load_florence2(src), load_florence2(dst)
    assert {p.dtype for p in stored.model.parameters()} == {torch.float32}
    expected = {k: v.to(torch.bfloat16).float() for k, v in full.model.state_dict().items()}
    for name, value in stored.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert {p.dtype for p in load_florence2(dst, dtype="bfloat16").model.parameters()} == {torch.bfloat16}
