"""DBFusion: depth-breadth fusion of the Florence-2 features, and the projector to the LLM width.

Variants compared in the paper (its Table 6): channel concatenation (the default and the release's),
token concatenation, average pooling; over any subset of {depth, caption, ocr, grounding}.

    channel:  [depth | caption | ocr | grounding] along channels   (B, N, k*d) -> projector -> (B, N, H)
    token:    the k feature sets one after another along tokens   (B, k*N, d) -> projector -> (B, k*N, H)
    average:  the mean of the k feature sets                       (B, N, d)   -> projector -> (B, N, H)

The projector `mlpKx_gelu` is Linear, then K-1 times (GELU, Linear), laid out as the release's
`encoder_mlp` (keys 0, 1.1, 2.1 for K=3), so published projector weights load as they are.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from .features import check_sources

FUSIONS = ("channel", "token", "average")


def projector(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """`mlpKx_gelu` (K >= 1) or `linear` (= mlp1x_gelu)."""
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    depth = 1 if kind == "linear" else int(match.group(1)) if match else 0
    if depth < 1:
        raise ValueError(f"unknown projector {kind!r}; use mlpKx_gelu (e.g. mlp3x_gelu) or linear")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    layers += [nn.Sequential(nn.GELU(), nn.Linear(out_dim, out_dim)) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


class DBFusion(nn.Module):
    """Fuse the chosen feature sources and project them to the LLM's embedding width."""

    def __init__(self, feature_dim: int, llm_dim: int, sources: Sequence[str] = ("depth", "caption", "ocr", "grounding"),
                 fusion: str = "channel", projector_type: str = "mlp3x_gelu"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
        self.sources = check_sources(sources)
        self.fusion = fusion
        in_dim = feature_dim * len(self.sources) if fusion == "channel" else feature_dim
        # Named as in the release (model.mm_projector.encoder_mlp.*).
        self.encoder_mlp = projector(projector_type, in_dim, llm_dim)

    def fuse(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [features[s] for s in self.sources]
        if self.fusion == "channel":
            return torch.cat(parts, dim=-1)
        if self.fusion == "token":
            return torch.cat(parts, dim=1)
        return torch.stack(parts, dim=0).mean(dim=0)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder_mlp(self.fuse(features))

    def num_tokens(self, num_image_tokens: int) -> int:
        return num_image_tokens * (len(self.sources) if self.fusion == "token" else 1)
