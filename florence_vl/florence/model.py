"""UniCL-nano: Florence's two-tower image/text model (arXiv 2111.11432) at toy size.

Image tower: transformers' DaViT (`Florence2VisionBackbone`, the very class Florence-2 uses as
`model.vision_tower`), then global average pooling, LayerNorm and a linear projection.
Text tower: a small pre-LN transformer encoder over token embeddings + learned positions, read out at
the last real token (the tokenizer's </s>), then a linear projection.
Both towers end L2-normalised in one `embed_dim` space; a learnable temperature (as log 1/T, CLIP's
`logit_scale`) turns cosine similarities into logits.

The backbone sits under the attribute name `vision_tower`, so its state-dict keys are exactly those of
Florence-2's `model.vision_tower` behind a "vision_tower." prefix (see checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig
from transformers.models.florence2.modeling_florence2 import Florence2VisionBackbone

# A nano DaViT: the published 4-stage layout (strides 4,2,2,2) at 1/4 of base's widths and depth 1,1,2,1.
NANO_VISION = dict(
    depths=[1, 1, 2, 1], embed_dim=[32, 64, 128, 256], num_heads=[1, 2, 4, 8], num_groups=[1, 2, 4, 8],
    window_size=4, patch_size=[7, 3, 3, 3], patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
    patch_prenorm=[False, True, True, True], drop_path_rate=0.0, projection_dim=256,
    max_position_embeddings=50, max_temporal_embeddings=100,
)

# The DaViT settings that decide what the weights mean: two towers that differ in any of these cannot share weights.
ARCHITECTURE_KEYS = ("in_channels", "depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm",
                     "embed_dim", "num_heads", "num_groups", "window_size", "mlp_ratio", "qkv_bias",
                     "activation_function")


@dataclass
class UniCLConfig:
    vision: dict = field(default_factory=lambda: dict(NANO_VISION))  # Florence2VisionConfig fields
    image_size: int = 128
    vocab_size: int = 2048
    text_width: int = 256
    text_layers: int = 3
    text_heads: int = 4
    max_len: int = 32
    pad_token_id: int = 1
    embed_dim: int = 256
    init_temperature: float = 0.07

    def vision_config(self) -> Florence2VisionConfig:
        return Florence2VisionConfig(**self.vision)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UniCLConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class TextTower(nn.Module):
    """Token + learned position embeddings -> pre-LN transformer encoder -> LayerNorm, read at the last real token."""

    def __init__(self, config: UniCLConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width, padding_idx=config.pad_token_id)
        self.position_embedding = nn.Parameter(torch.zeros(config.max_len, config.text_width))
        layer = nn.TransformerEncoderLayer(config.text_width, config.text_heads, 4 * config.text_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.text_width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embedding.shape[0]:
            raise ValueError(f"text of {length} tokens is longer than the tower's {self.position_embedding.shape[0]} "
                             "positions; tokenize with max_length=config.max_len")
        hidden = self.token_embedding(input_ids) + self.position_embedding[:length]
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        hidden = self.final_norm(hidden)
        last = attention_mask.long().sum(dim=1).clamp(min=1) - 1   # right padding: the last real token is </s>
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class UniCL(nn.Module):
    def __init__(self, config: UniCLConfig):
        super().__init__()
        self.config = config
        vision = config.vision_config()
        self.vision_tower = Florence2VisionBackbone(vision)
        width = vision.embed_dim[-1]
        self.image_norm = nn.LayerNorm(width)
        self.image_projection = nn.Linear(width, config.embed_dim, bias=False)
        self.text_tower = TextTower(config)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        nn.init.normal_(self.image_projection.weight, std=width ** -0.5)
        nn.init.normal_(self.text_projection.weight, std=config.text_width ** -0.5)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """DaViT's last map (B, C, h, w), as Florence-2's vision tower gives it."""
        return self.vision_tower(pixel_values).last_hidden_state

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.image_features(pixel_values).mean(dim=(2, 3))
        return F.normalize(self.image_projection(self.image_norm(pooled)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_tower(input_ids, attention_mask)), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 as in CLIP so the temperature cannot collapse."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """logits_per_image (B_images, B_texts); logits_per_text is its transpose."""
        image = self.encode_image(pixel_values)
        text = self.encode_text(input_ids, attention_mask)
        return self.scale() * image.float() @ text.float().t()


def tokenize(tokenizer, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask; a text longer than max_len is cut but keeps its </s> as the last token."""
    rows = []
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [ids[-1]]
        rows.append(ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])}
