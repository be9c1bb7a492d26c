"""Florence-VL model: splicing at <image>, labels, left-padded batched generation with KV cache, any causal LM."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from conftest import spread_weights
from florence_vl.vl.model import IGNORE_INDEX, IMAGE_TOKEN_INDEX, FlorenceVLForCausalLM, VLConfig, pad_rows


@pytest.fixture(scope="module")
def llm_tokenizer():
    from florence_vl.vl.nano_llm import train_llm_tokenizer

    return train_llm_tokenizer(["a red circle above the blue square", "How many shapes are there? 3 yes no",
                                "What color is the star? green", "Describe the image in detail."], 320)


def tiny_llm(kind: str, vocab: int):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=2,
                  bos_token_id=0, eos_token_id=1)
    if kind == "llama":
        return spread_weights(LlamaForCausalLM(LlamaConfig(**common)), std=0.3)
    return spread_weights(Phi3ForCausalLM(Phi3Config(**common)), std=0.3)


def build(tiny_florence2, kind="llama", vocab=320, **config):
    return FlorenceVLForCausalLM(tiny_florence2.model, tiny_florence2.tokenizer, tiny_florence2.num_image_tokens,
                                 tiny_llm(kind, vocab), VLConfig(**config)).eval()


@pytest.mark.parametrize("fusion,tokens", [("channel", 5), ("token", 20)])
def test_splice_puts_features_at_the_marker(tiny_florence2, fusion, tokens):
    model = build(tiny_florence2, fusion=fusion)
    pixels = torch.randn(2, 3, 64, 64)
    rows = [[0, 10, IMAGE_TOKEN_INDEX, 11, 12], [0, IMAGE_TOKEN_INDEX, 13]]
    labels = [[IGNORE_INDEX, IGNORE_INDEX, IMAGE_TOKEN_INDEX, 11, 12], [IGNORE_INDEX, IMAGE_TOKEN_INDEX, 13]]
    batch = pad_rows(rows, pad_id=2, side="right", labels=labels)
    with torch.no_grad():
        out = model.splice(batch["input_ids"], batch["attention_mask"], batch["labels"], pixels)
        feats = model.image_features(pixels)
    emb = model.llm.get_input_embeddings()
    assert feats.shape == (2, tokens, 32)
    assert out["inputs_embeds"].shape == (2, 4 + tokens, 32)
    torch.testing.assert_close(out["inputs_embeds"][0, 2:2 + tokens], feats[0])
    torch.testing.assert_close(out["inputs_embeds"][1, 1:1 + tokens], feats[1])
    torch.testing.assert_close(out["inputs_embeds"][0, 2 + tokens], emb.weight[11])
    assert (out["labels"][0, 2:2 + tokens] == IGNORE_INDEX).all()
    assert out["labels"][0, -2:].tolist() == [11, 12]
    assert out["attention_mask"][1].tolist() == [1] * (2 + tokens) + [0] * 2  # right padding
    left = model.splice(batch["input_ids"], batch["attention_mask"], None, pixels, padding_side="left")
    assert left["attention_mask"][1].tolist() == [0] * 2 + [1] * (2 + tokens)
    with pytest.raises(ValueError, match="image"):
        model.splice(batch["input_ids"], batch["attention_mask"], None, pixels[:1])


def test_loss_ignores_image_positions_and_padding(tiny_florence2):
    model = build(tiny_florence2)
    pixels = torch.randn(1, 3, 64, 64)
    ids = [0, IMAGE_TOKEN_INDEX, 10, 11, 12]
    labels = [IGNORE_INDEX, IMAGE_TOKEN_INDEX, IGNORE_INDEX, 11, 12]
    one = pad_rows([ids], 2, labels=[labels])
    two = pad_rows([ids, [0, 5]], 2, labels=[labels, [IGNORE_INDEX, IGNORE_INDEX]])
    with torch.no_grad():
        loss_one = model(**one, pixel_values=pixels).loss
        logits = model(**one, pixel_values=pixels).logits
        # a second row with no targets and no image changes nothing
        loss_two = model(input_ids=two["input_ids"], attention_mask=two["attention_mask"], labels=two["labels"],
                         pixel_values=pixels).loss
    # by hand: the two text targets, predicted from the position before each
    n = 5
    logp = logits[0].log_softmax(-1)
    manual = -(logp[n + 1, 11] + logp[n + 2, 12]) / 2
    torch.testing.assert_close(loss_one, manual)
    torch.testing.assert_close(loss_one, loss_two)


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_loss_only_projects_the_targets_and_gives_the_full_loss_and_gradients(tiny_florence2, kind):
    model = build(tiny_florence2, kind).train()
    model.freeze_vision()
    pixels = torch.randn(2, 3, 64, 64)
    rows = [[0, IMAGE_TOKEN_INDEX, 10, 11, 12, 13], [0, 7, IMAGE_TOKEN_INDEX, 20, 21], [0, 5, 6]]
    labels = [[IGNORE_INDEX, IMAGE_TOKEN_INDEX, IGNORE_INDEX, 11, 12, 13],
              [IGNORE_INDEX, IGNORE_INDEX, IMAGE_TOKEN_INDEX, IGNORE_INDEX, 21], [IGNORE_INDEX, IGNORE_INDEX, 6]]
    batch = pad_rows(rows, 2, labels=labels)

    def loss_and_grads(**options):
        model.zero_grad()
        loss = model(**batch, pixel_values=pixels, **options).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    full, full_grads = loss_and_grads()
    fast, fast_grads = loss_and_grads(loss_only=True)
    torch.testing.assert_close(fast, full)
    assert len(fast_grads) == len(full_grads) > 0
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b)
    # a global target count (several processes) divides the summed loss, as the LLM's own loss does
    count = torch.tensor(10)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, pixel_values=pixels, loss_only=True, num_items_in_batch=count).loss,
                                   model(**batch, pixel_values=pixels, num_items_in_batch=count).loss)


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_batched_left_padded_generation_equals_one_at_a_time(tiny_florence2, kind):
    model = build(tiny_florence2, kind)
    torch.manual_seed(3)
    pixels = torch.randn(3, 3, 64, 64)
    rows = [[0, IMAGE_TOKEN_INDEX, 10, 11, 12, 13, 14], [0, IMAGE_TOKEN_INDEX, 20], [0, 7, IMAGE_TOKEN_INDEX, 30, 31]]
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=2, eos_token_id=None)
    singles = [model.generate(**pad_rows([r], 2, side="left"), pixel_values=pixels[i:i + 1], **options)[0].tolist()
               for i, r in enumerate(rows)]
    batched = model.generate(**pad_rows(rows, 2, side="left"), pixel_values=pixels, **options)
    assert [b.tolist() for b in batched] == singles
    assert len({tuple(s) for s in singles}) > 1
    # the KV cache changes nothing but speed
    nocache = model.generate(**pad_rows(rows, 2, side="left"), pixel_values=pixels, use_cache=False, **options)
    assert nocache.tolist() == batched.tolist()


def test_the_image_changes_the_answer(tiny_florence2):
    model = build(tiny_florence2)
    ids = pad_rows([[0, IMAGE_TOKEN_INDEX, 10]], 2)
    with torch.no_grad():
        a = model(**ids, pixel_values=torch.randn(1, 3, 64, 64)).logits[0, -1]
        b = model(**ids, pixel_values=torch.randn(1, 3, 64, 64)).logits[0, -1]
    assert not torch.allclose(a, b)
