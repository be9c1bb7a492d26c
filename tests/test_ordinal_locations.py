"""The <loc_k> ordering aids: smooth embedding init and Gaussian soft labels."""

import torch
import torch.nn.functional as F

from florence_vl.train.ordinal_locations import (NUM_BINS, location_soft_targets, location_token_ids,
                                                 seq2seq_loss_with_soft_locations, smooth_location_embeddings)


def test_soft_loss_with_identity_targets_is_plain_cross_entropy(tiny_tokenizer):
    torch.manual_seed(0)
    vocab = len(tiny_tokenizer)
    loc_ids = location_token_ids(tiny_tokenizer)
    logits = torch.randn(2, 5, vocab)
    labels = torch.tensor([[loc_ids[3].item(), 7, loc_ids[999].item(), -100, -100],
                           [9, loc_ids[0].item(), loc_ids[500].item(), 11, -100]])
    ours = seq2seq_loss_with_soft_locations(logits, labels, loc_ids, location_soft_targets(0))
    reference = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, reference)


def test_soft_targets_reward_near_misses():
    targets = location_soft_targets(5.0)
    assert targets.shape == (NUM_BINS, NUM_BINS)
    torch.testing.assert_close(targets.sum(1), torch.ones(NUM_BINS))
    assert targets[500].argmax() == 500 and targets[0].argmax() == 0
    ratio = targets[500] / targets[500, 500]                      # a Gaussian of 5 bins
    torch.testing.assert_close(ratio[[505, 495, 520]], torch.exp(torch.tensor([-0.5, -0.5, -8.0])))
    torch.testing.assert_close(targets[0, :3] / targets[0, 0], torch.exp(-0.5 * (torch.arange(3.0) / 5) ** 2))


def test_soft_loss_prefers_a_prediction_one_bin_off_to_one_far_off(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    loc_ids = location_token_ids(tiny_tokenizer)
    labels = torch.tensor([[loc_ids[400].item()]])
    soft = location_soft_targets(4.0)

    def loss_when_predicting(bin_index):
        logits = torch.zeros(1, 1, vocab)
        logits[0, 0, loc_ids[bin_index]] = 10.0
        return seq2seq_loss_with_soft_locations(logits, labels, loc_ids, soft).item()

    assert loss_when_predicting(400) < loss_when_predicting(401) < loss_when_predicting(430)
    # plain cross-entropy cannot tell the near miss from the far one
    hard = location_soft_targets(0)
    near = torch.zeros(1, 1, vocab); near[0, 0, loc_ids[401]] = 10.0
    far = torch.zeros(1, 1, vocab); far[0, 0, loc_ids[430]] = 10.0
    torch.testing.assert_close(seq2seq_loss_with_soft_locations(near, labels, loc_ids, hard),
                               seq2seq_loss_with_soft_locations(far, labels, loc_ids, hard))


def test_smooth_location_embeddings_make_neighbouring_bins_similar(tiny_tokenizer):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(len(tiny_tokenizer), 32)
    torch.nn.init.normal_(embedding.weight, std=0.02)
    loc_ids = location_token_ids(tiny_tokenizer)
    other = embedding.weight[:10].clone()
    smooth_location_embeddings(embedding, loc_ids)
    rows = embedding.weight[loc_ids]
    cos = F.cosine_similarity
    assert cos(rows[500], rows[501], dim=0) > 0.9
    assert cos(rows[500], rows[501], dim=0) > cos(rows[500], rows[900], dim=0) + 0.3
    assert abs(rows.std().item() - 0.02) < 0.005                  # sits among the other embeddings
    torch.testing.assert_close(embedding.weight[:10], other)      # other tokens untouched
