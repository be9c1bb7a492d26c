"""LLM decoding with the KV cache at Phi-3.5-mini geometry (random weights), against the memory-bandwidth bound.

Florence-VL-3B's LLM is Phi-3.5-mini: hidden 3072, MLP 8192, 32 heads (no GQA), vocabulary 32064, untied head.
One decoded token must read every weight of every layer, the final norm and the LM head once, plus the KV cache
so far; nothing else is large. So tokens/s <= read bandwidth / bytes per token. The model here keeps fewer
than the 32 layers (the bound scales per layer, and so does our time: the fraction holds for the full depth;
the LM head and embedding are kept whole, which makes a few-layer model slightly harder than the full one).

    llm_decode_bf16: ours (transformers generate, KV cache, bf16; Linear weights pre-packed for oneDNN where
                     `packed_linear.packing_pays()`, i.e. without AMX; plain F.linear on AMX CPUs, where it is
                     faster) vs reference = the bandwidth bound: ratio = fraction of the bound. Both variants
                     are timed and given in the details.
    llm_decode_int8: ours (torch.ao dynamic int8 quantization of every Linear) vs reference (our bf16 above)

Decode speed = (new tokens - 1) / (time of generate(N) - time of generate(1)), so prefill is not counted.
"""

from __future__ import annotations

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from common import dram_read_bandwidth, fmt, others_note, timed
from florence_vl.packed_linear import pack_linear_weights, packing_pays

PHI35_MINI = dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32,
                  vocab_size=32064, max_position_embeddings=4096, tie_word_embeddings=False)


def build(layers: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Phi3ForCausalLM:
    torch.manual_seed(seed)
    config = Phi3Config(num_hidden_layers=layers, pad_token_id=0, bos_token_id=1, eos_token_id=2, **PHI35_MINI)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype: no fp32 copy of the weights
    try:
        model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def bytes_per_token(model, context: int) -> int:
    """Weights read by one decode step (all but the embedding table, of which one row is read) + the KV cache."""
    total = 0
    embed = model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        if p is not embed:
            total += p.numel() * p.element_size()
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    for module in model.modules():  # quantized Linear layers keep packed weights outside named_parameters
        if isinstance(module, DynamicQuantizedLinear):
            w, b = module.weight(), module.bias()
            total += w.numel() * w.element_size() + (b.numel() * b.element_size() if b is not None else 0)
    c = model.config
    kv_dtype_bytes = 2 if next(model.parameters()).dtype == torch.bfloat16 else 4
    total += 2 * c.num_hidden_layers * context * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) \
        * kv_dtype_bytes
    return total


def decode_rate(model, prompt: torch.Tensor, new_tokens: int, repeats: int = 2) -> tuple[float, dict]:
    """(tokens/s of decoding alone, details). Exactly `new_tokens` tokens each time (no early stop)."""
    options = dict(do_sample=False, num_beams=1, use_cache=True, pad_token_id=0, eos_token_id=None)

    def gen(n):
        with torch.inference_mode():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                  min_new_tokens=n, **options)

    gen(2)  # warm-up
    best_1 = best_n = None
    out = None
    for _ in range(repeats):
        with timed() as t1:
            gen(1)
        with timed() as tn:
            out = gen(new_tokens)
        best_1 = t1 if best_1 is None or t1.seconds < best_1.seconds else best_1
        best_n = tn if best_n is None or tn.seconds < best_n.seconds else best_n
    rate = (new_tokens - 1) / max(1e-9, best_n.seconds - best_1.seconds)
    return rate, {"prefill_s": best_1.seconds, "generate_s": best_n.seconds, "timing": best_n,
                  "tokens": out[0, prompt.shape[1]:].tolist()}


def quantize_int8(model_fp32) -> torch.nn.Module:
    """torch.ao dynamic quantization: int8 weights (per tensor, fbgemm), activations quantized on the fly per
    batch; every nn.Linear including the LM head. It takes an fp32 model (the rest of the model stays fp32)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model_fp32, {torch.nn.Linear}, dtype=torch.qint8)


def run(quick: bool = False, layers: int | None = None, verbose: bool = True) -> list[dict]:
    say = print if verbose else (lambda *a, **k: None)
    layers = layers or (2 if quick else 8)
    new_tokens = 16 if quick else 48
    prompt_len = 32
    bandwidth = dram_read_bandwidth()
    say(f"Phi-3.5-mini geometry with {layers} of 32 layers, prompt {prompt_len} tokens, {new_tokens} new tokens; "
        f"read bandwidth measured now {bandwidth:.1f} GB/s")
    prompt = torch.randint(3, PHI35_MINI["vocab_size"], (1, prompt_len), generator=torch.Generator().manual_seed(0))
    context = prompt_len + new_tokens // 2

    bf16 = build(layers, torch.bfloat16)
    per_token = bytes_per_token(bf16, context)
    bound = bandwidth * 1e9 / per_token
    rate_plain, d_plain = decode_rate(bf16, prompt, new_tokens)
    say(f"  bf16, transformers as it comes (F.linear re-packs every weight on every call): {rate_plain:.2f} tok/s = "
        f"{rate_plain / bound:.0%} of the bound; {others_note(d_plain['timing'])}")
    packed = pack_linear_weights(bf16)
    rate_packed, d_packed = decode_rate(bf16, prompt, new_tokens)
    same_tokens = d_packed["tokens"] == d_plain["tokens"]
    pays = packing_pays()
    rate_bf16, d_bf16 = (rate_packed, d_packed) if pays else (rate_plain, d_plain)
    say(f"  bf16 pre-packed: {rate_packed:.2f} tok/s = {rate_packed / bound:.0%} of the bound; ours: "
        f"{'pre-packed' if pays else 'plain F.linear (AMX CPU: packing does not pay)'}")
    say(f"  bf16 with {packed} Linear weights pre-packed (florence_vl.packed_linear): same tokens {same_tokens}")
    say(f"  bf16: {rate_bf16:.2f} tok/s decode, prefill {d_bf16['prefill_s']:.2f} s; {per_token / 1e6:.0f} MB/token "
        f"-> bound {bound:.2f} tok/s; {others_note(d_bf16['timing'])}")
    rows = [{"name": "llm_decode_bf16", "ours": rate_bf16, "reference": bound, "unit": "tok/s",
             "ratio": rate_bf16 / bound, "bandwidth_fraction": rate_bf16 / bound, "bound": bound,
             "bandwidth_gb_s": bandwidth, "bytes_per_unit": per_token, "layers": layers,
             "new_tokens": new_tokens, "prompt_tokens": prompt_len, "prefill_s": d_bf16["prefill_s"],
             "peak_rss_mb": d_bf16["timing"].peak_rss_mb, "others": d_bf16["timing"].others,
             "plain_bf16_tok_s": rate_plain, "plain_bf16_fraction": rate_plain / bound, "same_tokens_as_plain": same_tokens,
             "packed_bf16_tok_s": rate_packed, "packed_bf16_fraction": rate_packed / bound,
             "ours_is": "bf16, KV cache, " + ("pre-packed Linear weights" if pays else "plain F.linear"),
             "reference_is": "memory-bandwidth bound"}]
    # int8: quantize_dynamic takes an fp32 model; build it with the same seed (same weights before rounding).
    del bf16
    fp32 = build(layers, torch.float32)
    with torch.inference_mode():
        logits_fp32 = fp32(prompt).logits[0, -1]
    int8 = quantize_int8(fp32)
    rate_int8, d_int8 = decode_rate(int8, prompt, new_tokens)
    per_token_int8 = bytes_per_token(int8, context)
    bound_int8 = bandwidth * 1e9 / per_token_int8
    with torch.inference_mode():
        logits_int8 = int8(prompt).logits[0, -1]
    agree = sum(a == b for a, b in zip(d_int8["tokens"], d_bf16["tokens"])) / new_tokens
    cos = torch.nn.functional.cosine_similarity(logits_int8.float(), logits_fp32.float(), dim=0).item()
    say(f"  int8: {rate_int8:.2f} tok/s decode, {per_token_int8 / 1e6:.0f} MB/token -> bound {bound_int8:.2f} tok/s; "
        f"next-token logits cosine vs fp32 {cos:.4f}, greedy tokens equal to bf16's: {agree:.0%}; "
        f"{others_note(d_int8['timing'])}")
    rows.append({"name": "llm_decode_int8", "ours": rate_int8, "reference": rate_bf16, "unit": "tok/s",
                 "ratio": rate_int8 / rate_bf16, "bandwidth_fraction": rate_int8 / bound_int8, "bound": bound_int8,
                 "bandwidth_gb_s": bandwidth, "bytes_per_unit": per_token_int8, "layers": layers,
                 "logits_cosine_vs_fp32": cos, "greedy_agreement_vs_bf16": agree,
                 "peak_rss_mb": d_int8["timing"].peak_rss_mb, "others": d_int8["timing"].others,
                 "reference_is": "our bf16 decode above", "plain_bf16_tok_s": rate_plain,
                 "packed_bf16_tok_s": rate_packed,
                 "ratio_vs_plain_bf16": rate_int8 / rate_plain})
    full = _full_depth_bytes(per_token, layers)
    say(f"  at the full 32 layers ({full / 1e9:.1f} GB per token) the bf16 bound is {bandwidth * 1e9 / full:.2f} tok/s; "
        f"at the same fraction ours would decode {rate_bf16 / bound * bandwidth * 1e9 / full:.2f} tok/s")
    return rows


def _full_depth_bytes(per_token: int, layers: int, bytes_per_param: int = 2) -> float:
    """Bytes per token of the 32-layer model: add the missing layers' weights (KV growth ignored)."""
    c = PHI35_MINI
    h, m = c["hidden_size"], c["intermediate_size"]
    per_layer = (4 * h * h + 3 * h * m + 2 * h) * bytes_per_param   # qkv + o, gate_up + down, two norms
    return per_token + (32 - layers) * per_layer


if __name__ == "__main__":
    import argparse

    from common import setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layers", type=int)
    args = parser.parse_args()
    setup()
    for row in run(args.quick, args.layers):
        print(row["name"], {k: v for k, v in row.items() if k != "name"})
