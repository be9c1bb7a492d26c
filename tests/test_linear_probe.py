"""The linear probe of docs/nano.md's tower measurements: it reads a label the features hold, not one they do not,
and reports the majority class of the fitted rows beside."""
import torch

from florence_vl.eval.linear_probe import linear_probe


def test_the_probe_reads_what_the_features_hold_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (500,), generator=g).clamp(max=3)   # class 3 drawn 2 times in 5: the majority
    held = torch.nn.functional.one_hot(labels, 4).float() * 3 + torch.randn(500, 4, generator=g) * 0.3
    noise = torch.randn(500, 16, generator=g)
    accuracy, majority = linear_probe(held, labels, 4, train_share=0.6)
    assert accuracy > 0.95 and majority == (labels[300:] == 3).float().mean().item()
    assert linear_probe(noise, labels, 4, train_share=0.6)[0] < 0.5
