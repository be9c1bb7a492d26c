"""Florence-2 visual features for Florence-VL, with ONE DaViT pass per image.

* depth: DaViT's output after image_projection + LayerNorm (577 tokens at 768 px: a pooled token + 24x24);
* breadth: the Florence-2 encoder's output at the image positions for three task prompts (detailed caption,
  OCR, grounding). The three prompts of every image run as one encoder batch that reuses the image's depth
  features: [<image> x N][<s> prompt </s>], right-padded (`encoder_rows`), with the padding masked out.

The released code ran the whole model (DaViT included) once per prompt and attended to the padding of the
shorter prompts; `per_prompt_features` is that re-run path (without the padding mistake), kept as the
reference the one-pass path must equal, and as the baseline of bench/vl_features.py.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..florence2.runner import encoder_rows

# The exact prompts of the Florence-VL release (DESIGN.md), in channel order after depth.
BREADTH_PROMPTS = {
    "caption": "Describe in detail what is shown in the image.",
    "ocr": "What is the text in the image?",
    "grounding": "Locate the objects in the image, with their descriptions.",
}
SOURCES = ("depth",) + tuple(BREADTH_PROMPTS)


def check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    sources = tuple(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        raise ValueError(f"feature sources must be a non-empty subset of {SOURCES} without repeats, got {sources}")
    return tuple(s for s in SOURCES if s in sources)  # canonical order


class FlorenceFeatures(nn.Module):
    """Depth and breadth features of a batch of images from a native Florence2ForConditionalGeneration.

    forward(pixel_values) -> {source: (batch, num_image_tokens, projection_dim)} for the chosen sources.
    Gradients flow into Florence-2 unless the caller runs it under no_grad (stage 2 freezes it).
    """

    def __init__(self, florence2, tokenizer, num_image_tokens: int, sources: Sequence[str] = SOURCES):
        super().__init__()
        self.florence2 = florence2
        self.tokenizer = tokenizer
        self.sources = check_sources(sources)
        self.num_image_tokens = int(num_image_tokens)
        self.prompt_names = [s for s in self.sources if s != "depth"]
        prompts = [tokenizer(BREADTH_PROMPTS[name])["input_ids"] for name in self.prompt_names]
        config = florence2.config
        if prompts:
            ids, mask = encoder_rows(config.image_token_id, self.num_image_tokens, prompts,
                                     config.text_config.pad_token_id)
        else:
            ids = mask = torch.zeros(0, self.num_image_tokens, dtype=torch.long)
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.register_buffer("prompt_mask", mask, persistent=False)
        self.prompts_token_ids = prompts

    @property
    def dim(self) -> int:
        return self.florence2.config.vision_config.projection_dim

    def depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.florence2.model.get_image_features(pixel_values).pooler_output

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        depth = self.depth(pixel_values)                              # (B, N, d): the only DaViT pass
        batch, n = depth.shape[:2]
        if n != self.num_image_tokens:
            raise ValueError(f"DaViT gave {n} image tokens, the features expect {self.num_image_tokens}; "
                             "is the image size the one the model was configured for?")
        out = {"depth": depth} if "depth" in self.sources else {}
        p = len(self.prompt_names)
        if not p:
            return out
        embed = self.florence2.get_input_embeddings()
        prompt_embeds = embed(self.prompt_ids[:, n:]).to(depth.dtype)  # (P, L, d), shared by every image
        rows = torch.cat([depth.repeat_interleave(p, dim=0), prompt_embeds.repeat(batch, 1, 1)], dim=1)
        mask = self.prompt_mask.repeat(batch, 1)
        encoder = self.florence2.model.language_model.encoder
        hidden = encoder(inputs_embeds=rows, attention_mask=mask).last_hidden_state[:, :n]
        hidden = hidden.reshape(batch, p, n, -1)
        for k, name in enumerate(self.prompt_names):
            out[name] = hidden[:, k]
        return out


@torch.no_grad()
def per_prompt_features(features: FlorenceFeatures, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """The re-run path: Florence-2's own forward (DaViT included) once per prompt, one prompt at a time."""
    model = features.florence2
    out = {}
    if "depth" in features.sources:
        out["depth"] = features.depth(pixel_values)
    n = features.num_image_tokens
    for name, prompt in zip(features.prompt_names, features.prompts_token_ids):
        ids, mask = encoder_rows(model.config.image_token_id, n, [prompt] * pixel_values.shape[0],
                                 model.config.text_config.pad_token_id)
        encoded = model.model(input_ids=ids, pixel_values=pixel_values, attention_mask=mask,
                              decoder_input_ids=torch.zeros(ids.shape[0], 1, dtype=torch.long))
        out[name] = encoded.encoder_last_hidden_state[:, :n]
    return out
