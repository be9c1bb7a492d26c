"""A linear probe: how much of a label a set of features holds, read by a logistic regression (the probes of
docs/nano.md: shape and colour from the DaViT tokens over an object, a string's first character from those over it)."""

from __future__ import annotations

import torch


def linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int,
                 train_share: float = 0.8) -> tuple[float, float]:
    """(accuracy, majority-class accuracy) on the rows after the first `train_share` of them, with a multinomial
    logistic regression (standardised features, L2 1e-3, LBFGS 300 iterations) fit on those rows."""
    X = (features - features.mean(0)) / (features.std(0) + 1e-6)
    cut = int(train_share * len(labels))
    w = torch.zeros(X.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X[:cut] @ w + bias, labels[:cut]) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    accuracy = ((X[cut:] @ w + bias).argmax(1) == labels[cut:]).float().mean().item()
    majority = torch.bincount(labels[:cut], minlength=classes).argmax()
    return accuracy, (labels[cut:] == majority).float().mean().item()
