"""UniCL: the unified image-label-description contrastive loss (Florence, arXiv 2111.11432, after Yang et al. 2022).

A batch mixes image-label pairs (an image and a prompt for its class) and image-description pairs (an image
and its caption, each caption its own label). Image i and text j are positives when they carry the same
label, so two crops of a "red circle" both match both "red circle" prompts. With T[i, j] = [y_i == y_j],

    L_i2t = -1/B sum_i 1/|P(i)| sum_{j in P(i)} log softmax_j(s * <u_i, v_j>)
    L_t2i = -1/B sum_j 1/|P(j)| sum_{i in P(j)} log softmax_i(s * <u_i, v_j>)
    L = (L_i2t + L_t2i) / 2

i.e. a soft cross-entropy against each row of T normalised to sum 1. When every label is distinct T is the
identity and this is exactly CLIP's symmetric InfoNCE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unicl_targets(labels: torch.Tensor) -> torch.Tensor:
    """T[i, j] = 1 where labels[i] == labels[j] (the diagonal is always positive)."""
    labels = labels.view(-1)
    return (labels[:, None] == labels[None, :]).float()


def unicl_loss(logits_per_image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bidirectional soft cross-entropy of image-text logits (B, B) against label-sharing targets."""
    if logits_per_image.dim() != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
        raise ValueError(f"expected square logits (one text per image), got {list(logits_per_image.shape)}")
    if labels.numel() != logits_per_image.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {logits_per_image.shape[0]} pairs")
    logits = logits_per_image.float()
    targets = unicl_targets(labels.to(logits.device))
    targets = targets / targets.sum(dim=1, keepdim=True)   # symmetric, so rows and columns alike
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (image_to_text + text_to_image) / 2
