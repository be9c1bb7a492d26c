"""Florence-2 model geometries as data, and the image pre-processing that goes with them.

`base` and `large` are the published sizes (Florence-2-base 0.23B, Florence-2-large 0.77B): DaViT with
4 stages at strides 4,2,2,2 on a 768 px square gives a 24x24 map, plus one pooled token = 577 image
tokens. `tiny` keeps every shape relation at toy size for tests (64 px -> 2x2 + 1 = 5 image tokens).
"""

from __future__ import annotations

import copy
import math

from transformers import BartConfig, CLIPImageProcessorPil, Florence2Config
from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_DAVIT = dict(patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
              patch_prenorm=[False, True, True, True], window_size=12, max_temporal_embeddings=100,
              max_position_embeddings=50, drop_path_rate=0.1)
_BART = dict(max_position_embeddings=1024, activation_function="gelu", scale_embedding=False,
             bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)

PRESETS: dict[str, dict] = {
    "base": {
        "image_size": 768,
        "vision": dict(_DAVIT, depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                       num_groups=[4, 8, 16, 32], projection_dim=768),
        "text": dict(_BART, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                     decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    },
    "large": {
        "image_size": 768,
        "vision": dict(_DAVIT, depths=[1, 1, 9, 1], embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64],
                       num_groups=[8, 16, 32, 64], projection_dim=1024),
        "text": dict(_BART, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                     decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
    },
    # Florence-2-nano: the shipped model of the nano world (256 px scenes -> 8x8 + 1 = 65 image tokens).
    "nano": {
        "image_size": 256,
        "vision": dict(_DAVIT, depths=[1, 1, 2, 1], embed_dim=[32, 64, 128, 256], num_heads=[1, 2, 4, 8],
                       num_groups=[1, 2, 4, 8], projection_dim=256, window_size=4, max_position_embeddings=16,
                       max_temporal_embeddings=4, drop_path_rate=0.0),
        "text": dict(_BART, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, dropout=0.0,
                     max_position_embeddings=512),
    },
    "tiny": {
        "image_size": 64,
        "vision": dict(_DAVIT, depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 64], num_heads=[1, 2, 4, 8],
                       num_groups=[1, 2, 4, 8], projection_dim=32, window_size=2, max_position_embeddings=8,
                       max_temporal_embeddings=4, drop_path_rate=0.0),
        "text": dict(_BART, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256),
    },
}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise KeyError(f"unknown Florence-2 geometry {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def florence2_config(name: str, vocab_size: int, image_token_id: int) -> Florence2Config:
    """A native Florence2Config of a preset geometry for a tokenizer of `vocab_size` tokens."""
    p = preset(name)
    text = BartConfig(vocab_size=vocab_size, **p["text"])
    vision = Florence2VisionConfig(**p["vision"])
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)


def image_processor(image_size: int) -> CLIPImageProcessorPil:
    """Florence-2's pre-processing: bicubic resize to a square (no crop, aspect not kept), ImageNet norm."""
    square = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size=square, crop_size=square, do_center_crop=False, do_resize=True,
                                 resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)


def processor_image_size(processor) -> int:
    size = processor.size
    height = size["height"] if isinstance(size, dict) else size.height
    width = size["width"] if isinstance(size, dict) else size.width
    if height != width:
        raise ValueError(f"Florence-2 expects a square input size, got {width}x{height}")
    return int(height)


def feature_map_side(vision_config, image_size: int) -> int:
    """Side of DaViT's last feature map for a square input: each stage is a strided conv."""
    side = image_size
    for k, s, p in zip(vision_config.patch_size, vision_config.patch_stride, vision_config.patch_padding):
        side = math.floor((side + 2 * p - k) / s) + 1
    return side


def num_image_tokens(vision_config, image_size: int) -> int:
    """Image tokens the encoder sees: every cell of the last map plus one pooled token (577 at 768 px)."""
    return feature_map_side(vision_config, image_size) ** 2 + 1
