"""The 1000 <loc_k> tokens are ordered: teach a small model that from the first step, not after 100k steps.

Florence-2 writes every coordinate as one of 1000 tokens and trains them with plain cross-entropy, which
treats <loc_499> as exactly as wrong as <loc_0> when the answer is <loc_500>. With FLD-5B and hundreds of
thousands of steps the model learns the order anyway; a nano model trained for minutes on a CPU does not.
Two changes give it the order up front, and leave the published format untouched:

- `smooth_location_embeddings`: the <loc_k> embedding rows (tied to the output layer in BART) start as
  smooth functions of k (sinusoids over k), so the logits of neighbouring bins move together;
- `location_soft_targets`: a <loc_k> label becomes a discretised Gaussian over the neighbouring bins (sigma
  in bins), so a prediction one bin off earns most of the credit.

Cost: the soft loss gathers a (n_loc_labels, 1000) slice of the log-probs, a few percent of the LM head's work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NUM_BINS = 1000


def location_token_ids(tokenizer) -> torch.Tensor:
    """Vocabulary ids of <loc_0> .. <loc_999>, in bin order."""
    ids = tokenizer.convert_tokens_to_ids([f"<loc_{k}>" for k in range(NUM_BINS)])
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("the tokenizer lacks some <loc_k> tokens; call ensure_florence2_tokens first")
    return torch.tensor(ids, dtype=torch.long)


def sinusoid_table(positions: int, dim: int, lowest: float, highest: float, seed: int = 0) -> torch.Tensor:
    """(positions, dim) rows of sin/cos at log-spaced angular frequencies in [lowest, highest] rad per step,
    with random phases; each column has unit RMS."""
    generator = torch.Generator().manual_seed(seed)
    freqs = torch.exp(torch.linspace(math.log(lowest), math.log(highest), dim))
    phases = torch.rand(dim, generator=generator) * 2 * math.pi
    steps = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    return math.sqrt(2.0) * torch.sin(steps * freqs + phases)


@torch.no_grad()
def smooth_location_embeddings(embedding: torch.nn.Embedding, loc_ids: torch.Tensor, std: float | None = None,
                               seed: int = 0) -> None:
    """Overwrite the <loc_k> rows with sinusoids over k (periods from ~6 bins to ~the whole range),
    scaled to the current rows' std so they sit among the other token embeddings."""
    weight = embedding.weight
    scale = float(weight[loc_ids].std()) if std is None else std
    table = sinusoid_table(NUM_BINS, weight.shape[1], 2 * math.pi / NUM_BINS, 1.0, seed)
    weight[loc_ids] = (table * scale).to(weight.dtype)


def location_soft_targets(sigma: float, device=None) -> torch.Tensor:
    """(1000, 1000) rows: the target distribution over bins for each true bin, a Gaussian of `sigma` bins
    cut to [0, 999] and renormalised. sigma == 0 gives the identity (plain cross-entropy)."""
    bins = torch.arange(NUM_BINS, dtype=torch.float32, device=device)
    if sigma <= 0:
        return torch.eye(NUM_BINS, device=device)
    weights = torch.exp(-0.5 * ((bins.unsqueeze(0) - bins.unsqueeze(1)) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def seq2seq_loss_with_soft_locations(logits: torch.Tensor, labels: torch.Tensor, loc_ids: torch.Tensor,
                                     soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy where <loc_k> labels use `soft_targets[k]` over the location tokens and
    every other label is one-hot; -100 labels are ignored. Equals F.cross_entropy when the targets are
    the identity."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    valid = labels != -100
    safe = labels.clamp(min=0)
    token_nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)

    # bin index of each label (-1 where the label is not a location token)
    lookup = torch.full((log_probs.shape[-1],), -1, dtype=torch.long, device=labels.device)
    lookup[loc_ids.to(labels.device)] = torch.arange(NUM_BINS, device=labels.device)
    bins = lookup[safe]
    is_loc = valid & (bins >= 0)
    if is_loc.any():
        loc_log_probs = log_probs[is_loc][:, loc_ids.to(labels.device)]     # (n, 1000)
        soft_nll = -(soft_targets[bins[is_loc]] * loc_log_probs).sum(-1)
        token_nll = token_nll.masked_scatter(is_loc, soft_nll)
    return token_nll[valid].mean()
