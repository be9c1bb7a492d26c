"""Pre-packed bf16 Linear layers give F.linear's results bit for bit, in a whole LLM's generate too; where this CPU
cannot pack bf16 (AVX2-only: torch's reorder raises), nothing is packed and the results are the same plain ones."""

import copy
import functools

import pytest
import torch

from florence_vl.packed_linear import PackedLinear, can_pack, pack_linear_weights


def avx2_only(monkeypatch):
    """Make this CPU look like one whose oneDNN cannot pack bf16 (the error torch raises on AVX2-only CPUs)."""
    from florence_vl import packed_linear

    def refuse(weight, *args):
        if weight.dtype == torch.bfloat16:
            raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or "
                               "avx512bw, avx512vl and avx512dq")
        return real(weight, *args)

    real = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    monkeypatch.setattr(packed_linear, "can_pack", functools.lru_cache(maxsize=None)(packed_linear.can_pack.__wrapped__))


def test_can_pack_tries_the_reorder(monkeypatch):
    from florence_vl import packed_linear

    avx2_only(monkeypatch)
    assert packed_linear.can_pack(torch.bfloat16) is False
    assert packed_linear.can_pack(torch.float32) is True
    assert packed_linear.packing_pays() is False
    with pytest.raises(RuntimeError, match="cannot pack"):
        packed_linear.PackedLinear(torch.nn.Linear(8, 8).to(torch.bfloat16))


def test_without_bf16_packing_nothing_is_packed_and_answers_stay(tiny_florence2, monkeypatch):
    from PIL import Image

    from florence_vl.florence2.speed import fast_florence2
    from vl_tiny import tiny_vl

    avx2_only(monkeypatch)
    runner, how = fast_florence2(tiny_florence2, dtype=torch.bfloat16)
    assert "pre-packed" not in how and not any(isinstance(m, PackedLinear) for m in runner.model.modules())
    assert runner.run([Image.new("RGB", (64, 48), (10, 200, 30))], "<CAPTION>", max_new_tokens=6)[0].text
    vl = tiny_vl(tiny_florence2, "phi3")
    vl.model.llm.to(torch.bfloat16)
    image = Image.new("RGB", (70, 50), (200, 40, 40))
    before = vl.chat(image, "How many shapes are there?", max_new_tokens=8)
    assert vl.pack_weights(force=True) == 0
    assert vl.chat(image, "How many shapes are there?", max_new_tokens=8) == before


def test_packed_linear_is_bit_identical():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80).to(torch.bfloat16)
    if not can_pack(torch.bfloat16):          # AVX2-only CPU: a clear error, and pack_linear_weights packs nothing
        with pytest.raises(RuntimeError, match="cannot pack"):
            PackedLinear(linear)
        assert pack_linear_weights(linear) == 0
        return
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
    expected = 2 * 4 + 1 if can_pack(torch.bfloat16) else 0   # qkv, o, gate_up, down per layer + lm_head
    assert pack_linear_weights(packed) == expected
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
    assert (vl.pack_weights(force=True) > 0) == can_pack(torch.bfloat16)
    assert [vl.chat(image, q, max_new_tokens=8) for q in ("How many shapes are there?", "What color is the star?")] \
        == before


def test_pack_weights_only_where_it_pays(tiny_florence2, monkeypatch):
    """On AMX CPUs plain F.linear decodes faster than packed weights (docs/performance.md): nothing is packed
    unless forced; elsewhere pack_weights packs (where oneDNN can: see the AVX2-only tests above)."""
    from vl_tiny import tiny_vl

    from florence_vl import packed_linear

    vl = tiny_vl(tiny_florence2, "phi3")
    vl.model.llm.to(torch.bfloat16)
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: False)
    assert vl.pack_weights() == 0
    assert not any(isinstance(m, PackedLinear) for m in vl.model.llm.modules())
    monkeypatch.setattr(packed_linear, "packing_pays", lambda: True)
    assert (vl.pack_weights() > 0) == can_pack(torch.bfloat16)
