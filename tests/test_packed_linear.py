"""Pre-packed bf16 Linear layers give F.linear's results bit for bit, in a whole LLM's generate too."""

import copy

import pytest
import torch

from florence_vl.packed_linear import PackedLinear, can_pack, pack_linear_weights


def test_packed_linear_is_bit_identical():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80).to(torch.bfloat16)
    packed = PackedLinear(linear)
    for shape in [(1, 48), (7, 48), (2, 5, 48)]:
        x = torch.randn(shape, dtype=torch.bfloat16)
        with torch.inference_mode():
            assert torch.equal(packed(x), linear(x))
    with pytest.raises(RuntimeError):
        packed(torch.randn(1, 48, dtype=torch.bfloat16, requires_grad=True))


def test_packed_llm_generates_the_same_tokens():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=320, max_position_embeddings=128, pad_token_id=0, eos_token_id=2,
                        bos_token_id=1,
                        tie_word_embeddings=False)
    model = Phi3ForCausalLM(config).to(torch.bfloat16).eval()
    packed = copy.deepcopy(model)
    assert pack_linear_weights(packed) == 2 * 4 + 1          # qkv, o, gate_up, down per layer + lm_head
    assert pack_linear_weights(torch.nn.Linear(4, 4)) == 0    # fp32 layers are left alone
    prompt = torch.randint(1, 320, (2, 9))
    with torch.inference_mode():
        assert torch.equal(model(prompt).logits, packed(prompt).logits)
        options = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(prompt, **options), packed.generate(prompt, **options))


def test_florence_vl_pack_weights_keeps_the_answers(tiny_florence2):
    from PIL import Image

    from vl_tiny import tiny_vl

    vl = tiny_vl(tiny_florence2, "phi3")
    vl.model.llm.to(torch.bfloat16)
    image = Image.new("RGB", (70, 50), (200, 40, 40))
    before = [vl.chat(image, q, max_new_tokens=8) for q in ("How many shapes are there?", "What color is the star?")]
    assert vl.pack_weights(force=True) > 0
    assert [vl.chat(image, q, max_new_tokens=8) for q in ("How many shapes are there?", "What color is the star?")] \
        == before


def test_pack_weights_only_where_it_pays(tiny_florence2, monkeypatch):
    """On AMX CPUs plain F.linear decodes faster than packed weights (docs/performance.md): nothing is packed
    unless forced; elsewhere pack_weights packs."""
    from vl_tiny import tiny_vl

    from florence_vl import packed_linear

    assert can_pack(), "the pinned torch (pyproject.toml) has oneDNN linear packing; this one does not"
    vl = tiny_vl(tiny_florence2, "phi3")
    vl.model.llm.to(torch.bfloat16)
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: False)
    assert vl.pack_weights() == 0
    assert not any(isinstance(m, PackedLinear) for m in vl.model.llm.modules())
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: True)
    assert vl.pack_weights() > 0
