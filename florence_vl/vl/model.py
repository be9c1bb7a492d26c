"""The Florence-VL model: Florence-2 features -> DBFusion -> spliced into any transformers causal LM.

Text reaches the model as token ids holding IMAGE_TOKEN_INDEX (-200, as in LLaVA) where an image goes; the
LLM's vocabulary is never touched. `splice` replaces each such id by that image's projected features
(`fusion.num_tokens` rows), gives those positions the label IGNORE_INDEX, and pads the rows again: on the
right for training, on the left for batched generation (so every row's last token is its prompt's last).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from .feature_cache import FeatureCache, tensor_key
from .features import SOURCES, FlorenceFeatures
from .fusion import DBFusion

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
# Causal LMs whose logits are exactly lm_head(final hidden state): no soft-capping or logit scale (as Gemma 2 and
# Cohere have), so `forward(loss_only=True)` may project only the target positions and get the same loss.
PLAIN_HEAD_LMS = frozenset({"llama", "phi3", "mistral", "qwen2", "qwen3"})


@dataclass
class VLConfig:
    """What the Florence-VL parts are and how they meet (saved as florence_vl.json)."""

    sources: list = field(default_factory=lambda: list(SOURCES))
    fusion: str = "channel"
    projector_type: str = "mlp3x_gelu"
    template: str = "phi3"          # chat template name (chat.py)
    image_aspect_ratio: str = "pad"  # "pad": pad to square with the mean colour (the release); "resize": stretch
    freeze_vision: bool = False      # stage 2: Florence-2 frozen and run without gradients

    @classmethod
    def from_dict(cls, data: dict) -> "VLConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


class FlorenceVLForCausalLM(nn.Module):
    """Florence-2 (vision tower) + DBFusion projector + causal LM. See `splice` for the input convention."""

    def __init__(self, florence2, florence2_tokenizer, num_image_tokens: int, llm, config: VLConfig | None = None):
        super().__init__()
        self.config = config or VLConfig()
        self.vision_tower = FlorenceFeatures(florence2, florence2_tokenizer, num_image_tokens, self.config.sources)
        self.mm_projector = DBFusion(self.vision_tower.dim, llm.config.hidden_size, self.config.sources,
                                     self.config.fusion, self.config.projector_type)
        self.llm = llm
        # Training with Florence-2 frozen (stage 2): its features of an image never change, so they can be
        # kept per image (keyed by the pixels) instead of re-run every epoch. Off unless set (`cache_frozen_features`).
        self.frozen_feature_cache = None
        self.freeze_vision(self.config.freeze_vision)

    # -- parts -------------------------------------------------------------------------------------

    @property
    def florence2(self):
        return self.vision_tower.florence2

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def freeze_vision(self, frozen: bool = True) -> None:
        self.config.freeze_vision = bool(frozen)
        self.florence2.requires_grad_(not frozen)
        self.florence2.train(self.training and not frozen)  # frozen: no dropout, whenever it is frozen
        if not frozen and getattr(self, "frozen_feature_cache", None) is not None:
            self.frozen_feature_cache.clear()

    def train(self, mode: bool = True):
        """A frozen Florence-2 stays in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if self.config.freeze_vision:
            self.florence2.eval()
        return self

    def cache_frozen_features(self, max_images: int) -> None:
        """Keep the Florence-2 features of up to `max_images` images while Florence-2 is frozen (0: off). Valid only
        while its weights do not change: unfreezing it drops the cache."""
        self.frozen_feature_cache = FeatureCache(max_images) if max_images else None

    def vision_features(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Florence-2's {source: (images, tokens, dim)}; with Florence-2 frozen and a cache set, each image runs
        once and is then read back."""
        vision_dtype = next(self.florence2.parameters()).dtype
        pixel_values = pixel_values.to(self.device, vision_dtype)
        cache = self.frozen_feature_cache if self.config.freeze_vision else None
        if cache is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision):
                return self.vision_tower(pixel_values)
        keys = [tensor_key(p) for p in pixel_values]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}   # one row per distinct image
        found = {key: cache.get(key) for key in first}
        missing = [i for key, i in first.items() if found[key] is None]
        if missing:
            with torch.no_grad():
                computed = self.vision_tower(pixel_values[missing])
            for row, i in enumerate(missing):
                found[keys[i]] = torch.stack([computed[s][row] for s in self.vision_tower.sources])
                cache.put(keys[i], found[keys[i]])
        stacked = torch.stack([found[key] for key in keys])          # (images, sources, tokens, dim)
        return {s: stacked[:, k] for k, s in enumerate(self.vision_tower.sources)}

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, tokens, llm_width): fused, projected features of each image."""
        features = self.vision_features(pixel_values)
        projector_dtype = self.mm_projector.encoder_mlp[0].weight.dtype
        fused = self.mm_projector({k: v.to(projector_dtype) for k, v in features.items()})
        return fused.to(self.dtype)

    # -- splicing ----------------------------------------------------------------------------------

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
               padding_side: str = "right", image_embeds: torch.Tensor | None = None) -> dict:
        """Embed `input_ids` (padded either way, IMAGE_TOKEN_INDEX where images go, one image per marker in
        row order) with the images spliced in; returns inputs_embeds, attention_mask, labels, position_ids.
        `image_embeds` (images, tokens, width) may replace `pixel_values`: features computed once, reused."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        markers = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        given = image_embeds if image_embeds is not None else pixel_values
        images = 0 if given is None else given.shape[0]
        if markers != images:
            raise ValueError(f"{markers} image marker(s) in the text but {images} image(s) given")
        if image_embeds is None and images:
            image_embeds = self.image_features(pixel_values)
        embed = self.llm.get_input_embeddings()
        rows, row_labels = [], []
        next_image = 0
        for i in range(input_ids.shape[0]):
            keep = attention_mask[i].bool()
            ids = input_ids[i][keep]
            lab = labels[i][keep] if labels is not None else None
            parts, part_labels, start = [], [], 0
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            for pos in where + [len(ids)]:
                if pos > start:
                    parts.append(embed(ids[start:pos]))
                    part_labels.append(lab[start:pos] if lab is not None else ids[start:pos])
                if pos < len(ids):
                    feats = image_embeds[next_image]
                    next_image += 1
                    parts.append(feats)
                    part_labels.append(torch.full((feats.shape[0],), IGNORE_INDEX, dtype=torch.long,
                                                  device=ids.device))
                start = pos + 1
            rows.append(torch.cat(parts) if parts else embed(ids))
            row_labels.append(torch.cat(part_labels) if part_labels else ids)
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[-1]
        batch = len(rows)
        embeds = rows[0].new_zeros(batch, width, hidden)
        mask = torch.zeros(batch, width, dtype=torch.long, device=embeds.device)
        out_labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
        position_ids = torch.zeros(batch, width, dtype=torch.long, device=embeds.device)
        for i, (row, lab) in enumerate(zip(rows, row_labels)):
            n = row.shape[0]
            span = slice(0, n) if padding_side == "right" else slice(width - n, width)
            embeds[i, span] = row
            mask[i, span] = 1
            out_labels[i, span] = lab
            position_ids[i, span] = torch.arange(n, device=embeds.device)
        return {"inputs_embeds": embeds, "attention_mask": mask,
                "labels": out_labels if labels is not None else None, "position_ids": position_ids}

    # -- training and generation -------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                loss_only: bool = False, **kwargs):
        """The LLM's output over the spliced sequence. `loss_only=True` (training, with labels): the same loss,
        but the vocabulary projection runs only at the positions that predict a target (no logits returned)."""
        inputs = self.splice(input_ids, attention_mask, labels, pixel_values, padding_side="right")
        if loss_only and labels is not None and self.llm.config.model_type in PLAIN_HEAD_LMS:
            return self._target_loss(inputs, kwargs.get("num_items_in_batch"))
        return self.llm(**{k: v for k, v in inputs.items() if v is not None}, **kwargs)

    def _target_loss(self, inputs: dict, num_items_in_batch=None) -> CausalLMOutputWithPast:
        # Stage-2 answers are ~6% of the positions (bench/vl_train_step.py) and the projection to the vocabulary is
        # about a fifth of the nano LLM's matmul work, so projecting only the hidden states that predict a target
        # saves most of it.
        hidden = self.llm.get_decoder()(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                        position_ids=inputs["position_ids"], use_cache=False).last_hidden_state
        targets = inputs["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        loss = nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        return CausalLMOutputWithPast(loss=loss / count)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 **generation_kwargs) -> torch.Tensor:
        """New token ids only, (batch, new_tokens), left-padded prompts, KV cache on."""
        inputs = self.splice(input_ids, attention_mask, None, pixel_values, padding_side="left",
                             image_embeds=image_embeds)
        generation_kwargs.setdefault("use_cache", True)
        return self.llm.generate(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                 **generation_kwargs)


def pad_rows(rows: Sequence[list[int]], pad_id: int, side: str = "right",
             labels: Sequence[list[int]] | None = None) -> dict:
    """Token id lists -> padded input_ids / attention_mask (and labels padded with IGNORE_INDEX)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
        if lab is not None:
            lab[i, span] = torch.tensor(labels[i], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if lab is not None:
        out["labels"] = lab
    return out
