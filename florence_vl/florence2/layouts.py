"""The two published Florence-2 layouts and the exact mapping between them (keys, tensors, configs).

* ``native`` (florence-community/Florence-2-*): transformers' ``Florence2ForConditionalGeneration``.
* ``original`` (microsoft/Florence-2-*, remote code): DaViT layers wrapped in ``fn``/``dw``/``net`` modules,
  ``image_projection`` a bare ``[embed_dim, projection_dim]`` matrix used as ``x @ W``, BART under
  ``language_model.model`` with a (zero) ``final_logits_bias``.
Both directions are exact inverses (tested), so conversion round-trips.
"""

from __future__ import annotations

import torch
from transformers import BartConfig, Florence2Config
from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

from ..errors import CheckpointError

SHARED = "model.language_model.shared.weight"
LM_HEAD = "lm_head.weight"
# Everything tied to the shared word embedding; the first one present in a checkpoint is the source.
VOCAB_GROUP = (SHARED, "model.language_model.encoder.embed_tokens.weight",
               "model.language_model.decoder.embed_tokens.weight", LM_HEAD)
IMAGE_PROJECTION = "model.multi_modal_projector.image_projection.weight"
ORIGINAL_IMAGE_PROJECTION = "image_projection"
FINAL_LOGITS_BIAS = "language_model.final_logits_bias"
_ORIGINAL_LM = "language_model.model."
_NATIVE_LM = "model.language_model."
_PROJECTOR = "model.multi_modal_projector."
_PROJECTOR_PARAMS = {  # original name -> native name
    ORIGINAL_IMAGE_PROJECTION: IMAGE_PROJECTION,
    "image_proj_norm.weight": _PROJECTOR + "image_proj_norm.weight",
    "image_proj_norm.bias": _PROJECTOR + "image_proj_norm.bias",
    "image_pos_embed.row_embeddings.weight": _PROJECTOR + "image_position_embed.row_embeddings.weight",
    "image_pos_embed.column_embeddings.weight": _PROJECTOR + "image_position_embed.column_embeddings.weight",
    "visual_temporal_embed.pos_idx_to_embed": _PROJECTOR + "visual_temporal_embed.pos_idx_to_embed",
    "language_model.lm_head.weight": LM_HEAD,
}
# BART geometry shared by both config formats; generation settings travel in GenerationConfig instead.
_TEXT_FIELDS = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings", "activation_function",
                "scale_embedding", "dropout", "attention_dropout", "activation_dropout", "init_std",
                "encoder_layerdrop", "decoder_layerdrop", "classifier_dropout", "use_cache", "bos_token_id",
                "pad_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id")
GENERATION_FIELDS = ("num_beams", "no_repeat_ngram_size", "early_stopping", "forced_bos_token_id",
                      "forced_eos_token_id", "decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
_VISION_FIELDS = ("depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm", "num_heads", "num_groups",
                  "window_size", "drop_path_rate", "projection_dim", "mlp_ratio", "qkv_bias")


def detect_layout(config: dict) -> str:
    """'native' or 'original' from a config.json dict; CheckpointError for anything that is not Florence-2."""
    model_type = config.get("model_type")
    if model_type != "florence2":
        raise CheckpointError(f"config.json describes a {model_type!r} model, not Florence-2 (model_type 'florence2')")
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    if vision.get("model_type") == "davit" or text.get("model_type") == "florence2_language" or "dim_embed" in vision:
        return "original"
    if vision.get("model_type") == "florence_vision" or text.get("model_type") == "bart" or "embed_dim" in vision:
        return "native"
    raise CheckpointError("config.json is a Florence-2 config of neither known layout "
                          f"(vision_config model_type {vision.get('model_type')!r}, "
                          f"text_config model_type {text.get('model_type')!r})")


def _vision_table(depths: list[int]) -> dict[str, str]:
    """Original DaViT parameter name -> native one, for every parameter of a tower of these depths."""
    modules = []
    for stage, depth in enumerate(depths):
        modules += [(f"convs.{stage}.proj", f"convs.{stage}.conv"), (f"convs.{stage}.norm", f"convs.{stage}.norm")]
        for index in range(depth):
            for block, attention in (("spatial_block", "window_attn"), ("channel_block", "channel_attn")):
                prefix = f"blocks.{stage}.{index}.{block}"
                modules += [(f"{prefix}.{old}", f"{prefix}.{new}") for old, new in (
                    ("conv1.fn.dw", "conv1"), (f"{attention}.norm", "norm1"),
                    (f"{attention}.fn.qkv", f"{attention}.qkv"), (f"{attention}.fn.proj", f"{attention}.proj"),
                    ("conv2.fn.dw", "conv2"), ("ffn.norm", "norm2"),
                    ("ffn.fn.net.fc1", "ffn.fc1"), ("ffn.fn.net.fc2", "ffn.fc2"))]
    return {f"vision_tower.{old}.{param}": f"model.vision_tower.{new}.{param}"
            for old, new in modules for param in ("weight", "bias")}


def _name_tables(depths: list[int]) -> tuple[dict[str, str], dict[str, str]]:
    to_native = {**_vision_table(list(depths)), **_PROJECTOR_PARAMS}
    return to_native, {native: original for original, native in to_native.items()}


def _rename(key: str, table: dict[str, str], prefix_from: str, prefix_to: str) -> str:
    if key in table:
        return table[key]
    if key.startswith(prefix_from):
        return prefix_to + key[len(prefix_from):]
    return key  # unknown: left as is, so validation names it as the file spells it


def original_key_for(native_key: str, vision_depths: list[int]) -> str:
    """The name a native parameter has in the original layout (for checks and error messages)."""
    _, to_original = _name_tables(vision_depths)
    return _rename(native_key, to_original, _NATIVE_LM, _ORIGINAL_LM)


def original_to_native_state_dict(sd: dict[str, torch.Tensor], vision_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename an original-layout state dict to native names; `image_projection` is transposed.

    `language_model.final_logits_bias` has no native counterpart: it is dropped when all zeros (as published)
    and refused otherwise. Keys of neither layout are passed through unchanged.
    """
    table, _ = _name_tables(vision_depths)
    out = {}
    for key, tensor in sd.items():
        if key == FINAL_LOGITS_BIAS:
            if torch.count_nonzero(tensor):
                raise CheckpointError(f"{FINAL_LOGITS_BIAS} is not all zeros; the native Florence-2 model has no "
                                      "logits bias, so these weights cannot be loaded without changing outputs")
            continue
        if key == ORIGINAL_IMAGE_PROJECTION and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        out[_rename(key, table, _ORIGINAL_LM, _NATIVE_LM)] = tensor
    return out


def native_to_original_state_dict(sd: dict[str, torch.Tensor], vision_depths: list[int]) -> dict[str, torch.Tensor]:
    """Inverse of `original_to_native_state_dict`; adds the zero `final_logits_bias` the original model has."""
    _, table = _name_tables(vision_depths)
    out = {}
    for key, tensor in sd.items():
        if key == IMAGE_PROJECTION and tensor.dim() == 2:
            tensor = tensor.t().contiguous()
        out[_rename(key, table, _NATIVE_LM, _ORIGINAL_LM)] = tensor
    vocab = next((sd[k] for k in (LM_HEAD,) + VOCAB_GROUP if k in sd), None)
    if vocab is not None:
        out[FINAL_LOGITS_BIAS] = torch.zeros(1, vocab.shape[0], dtype=vocab.dtype, device=vocab.device)
    return out


# ---------------------------------------------------------------------------------------------------- configs


def original_to_native_config(original_config: dict, image_token_id: int, vocab_size: int) -> Florence2Config:
    """A native Florence2Config for an original (remote-code) config.json dict."""
    vision = dict(original_config.get("vision_config") or {})
    text = dict(original_config.get("text_config") or {})
    pos = vision.get("image_pos_embed") or {"type": "learned_abs_2d", "max_pos_embeddings": 50}
    temporal = vision.get("visual_temporal_embedding") or {"type": "COSINE", "max_temporal_embeddings": 100}
    sources = list(vision.get("image_feature_source", ["spatial_avg_pool", "temporal_avg_pool"]))
    if pos.get("type") != "learned_abs_2d" or temporal.get("type") != "COSINE" or \
            sources != ["spatial_avg_pool", "temporal_avg_pool"]:
        raise CheckpointError("transformers' Florence-2 supports learned_abs_2d position embeddings, COSINE temporal "
                              "embeddings and image_feature_source [spatial_avg_pool, temporal_avg_pool]; this "
                              f"config has {pos.get('type')!r}, {temporal.get('type')!r}, {sources}")
    if "dim_embed" not in vision:
        raise CheckpointError("original Florence-2 config.json has no vision_config.dim_embed")
    fields = {name: vision[name] for name in _VISION_FIELDS if name in vision}
    fields.setdefault("projection_dim", original_config.get("projection_dim", 1024))
    vision_config = Florence2VisionConfig(embed_dim=list(vision["dim_embed"]),
                                          max_position_embeddings=pos["max_pos_embeddings"],
                                          max_temporal_embeddings=temporal["max_temporal_embeddings"], **fields)
    text_config = BartConfig(vocab_size=vocab_size, **{name: text[name] for name in _TEXT_FIELDS if name in text})
    return Florence2Config(vision_config=vision_config, text_config=text_config, image_token_id=image_token_id)


def native_to_original_config(config: Florence2Config) -> dict:
    """The microsoft/Florence-2 config.json for a native config.

    The original vocabulary is everything before <image>: both published layouts put <image> right after it.
    """
    vision, text = config.vision_config, config.text_config
    vocab = int(config.image_token_id)
    dtype = str(config.dtype or "float32").replace("torch.", "")
    text_dict = {"model_type": "florence2_language", "vocab_size": vocab, "is_encoder_decoder": True,
                 **{name: getattr(text, name) for name in _TEXT_FIELDS if hasattr(text, name)}}
    vision_dict = {
        "model_type": "davit", "dim_embed": list(vision.embed_dim),
        **{name: list(getattr(vision, name)) if isinstance(getattr(vision, name), (list, tuple)) else getattr(vision, name)
           for name in _VISION_FIELDS},
        "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": vision.max_temporal_embeddings},
        "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": vision.max_position_embeddings},
        "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"], "enable_checkpoint": False,
    }
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config",
                     "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
        "model_type": "florence2", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "ignore_index": -100,
        "projection_dim": vision.projection_dim, "vocab_size": vocab, "is_encoder_decoder": True,
        "torch_dtype": dtype, "text_config": text_dict, "vision_config": vision_dict,
    }


# ---------------------------------------------------------------------------------------------------- reading files
