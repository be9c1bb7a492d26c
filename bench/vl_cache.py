"""Florence-VL time to first token (TTFT): a second question about an image against the first one.

The first question pays Florence-2 (DaViT once + the three breadth prompts through the encoder + DBFusion) and
the LLM prefill of the whole prompt (577 image positions + the text). The second one finds the image's fused
features in FlorenceVL's feature cache and the LLM's KV cache of the prompt up to the image in its prefix cache
(florence_vl/vl/feature_cache.py, chat.py), and prefills only its own question. A details line also times a
question with the feature cache alone (the whole prefill again).

Geometry: Florence-2-base vision (random weights, 768 px; --quick 384 px), DBFusion channel concat + mlp3x_gelu
to an LLM at Phi-3.5-mini width (3072, MLP 8192, 32 heads, vocabulary 32064) with `layers` of its 32 layers
(random weights, bf16). TTFT = the time of `FlorenceVL.chat(image, question, max_new_tokens=1)`. The ratio
depends on how much prefill there is: it is printed for the depth measured and extrapolated to 32 layers from
the measured per-layer prefill time (the vision part does not depend on the depth).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import Phi3Config, Phi3ForCausalLM

from common import others_note, timed
from llm_decode import PHI35_MINI

QUESTIONS = ["How many shapes are there?", "What color is the star?", "Is there a red circle in the image?"]


def build(size: int, layers: int, llm_dtype=torch.bfloat16, vision_dtype=None):
    from florence_vl.florence2.speed import fast_florence2
    from florence_vl.vl.chat import FlorenceVL
    from florence_vl.vl.features import BREADTH_PROMPTS
    from florence_vl.vl.model import FlorenceVLForCausalLM, VLConfig
    from florence_vl.vl.nano_llm import train_llm_tokenizer
    from florence2_batching import build as build_florence2

    florence, _ = build_florence2(size)
    florence, how = fast_florence2(florence, copy=False, dtype=vision_dtype)
    tokenizer = train_llm_tokenizer(QUESTIONS * 4 + list(BREADTH_PROMPTS.values()), 400)
    torch.manual_seed(1)
    config = Phi3Config(num_hidden_layers=layers, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **PHI35_MINI)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(llm_dtype)
    try:
        llm = Phi3ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model = FlorenceVLForCausalLM(florence.model, florence.tokenizer, florence.num_image_tokens, llm,
                                  VLConfig(template="phi3", freeze_vision=True))
    model.mm_projector.to(llm_dtype)
    return FlorenceVL(model.eval(), tokenizer, florence.image_processor, source="bench"), how


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (480 + 40 * i, 640, 3), dtype=np.uint8)) for i in range(n)]


def run(quick: bool = False, layers: int | None = None, verbose: bool = True) -> list[dict]:
    from florence_vl.vl.feature_cache import FeatureCache

    say = print if verbose else (lambda *a, **k: None)
    size = 384 if quick else 768
    layers = layers or (2 if quick else 4)
    vl, how = build(size, layers)
    n_images = 2 if quick else 3
    pictures = images(n_images + 1)
    vl.chat(pictures[-1], QUESTIONS[0], max_new_tokens=1)      # warm-up (kernels, compiled graphs)
    vl.chat(pictures[-1], QUESTIONS[1], max_new_tokens=1)
    firsts, seconds, features_only = [], [], []
    no_prefix = FeatureCache(0)
    for picture in pictures[:n_images]:
        vl.clear_caches()
        with timed() as first:                      # nothing cached: vision + the whole prefill
            vl.chat(picture, QUESTIONS[0], max_new_tokens=1)
        with timed() as second:                     # features and prompt prefix cached
            vl.chat(picture, QUESTIONS[1], max_new_tokens=1)
        prefixes, vl.prefix_cache = vl.prefix_cache, no_prefix
        with timed() as feature_hit:                # features cached, whole prefill again
            vl.chat(picture, QUESTIONS[2], max_new_tokens=1)
        vl.prefix_cache = prefixes
        firsts.append(first)
        seconds.append(second)
        features_only.append(feature_hit)
    first = min(firsts, key=lambda t: t.seconds)
    second = min(seconds, key=lambda t: t.seconds)
    feature_hit = min(features_only, key=lambda t: t.seconds)
    # Identical answers with and without the caches (8 greedy tokens; the caches hold these images now).
    cached = [vl.chat(p, QUESTIONS[2], max_new_tokens=8) for p in pictures[:2]]
    caches = vl.feature_cache, vl.prefix_cache
    vl.feature_cache, vl.prefix_cache = FeatureCache(0), FeatureCache(0)
    uncached = [vl.chat(p, QUESTIONS[2], max_new_tokens=8) for p in pictures[:2]]
    vl.feature_cache, vl.prefix_cache = caches
    identical = cached == uncached
    vision_s = first.seconds - feature_hit.seconds
    prefill_layer = feature_hit.seconds / layers    # upper bounds per layer (they include the head and the splice)
    suffix_layer = second.seconds / layers
    full_ratio = (vision_s + 32 * prefill_layer) / (32 * suffix_layer)
    features_full_ratio = (vision_s + 32 * prefill_layer) / (32 * prefill_layer)
    say(f"  ours: {how}; LLM Phi-3.5-mini width, {layers} layers, bf16; {vl.model.vision_tower.num_image_tokens} "
        f"image positions")
    say(f"  TTFT (best of {n_images} images): first question {first.seconds:.2f} s; second, features + prefix cached "
        f"{second.seconds:.3f} s; features cached only {feature_hit.seconds:.2f} s "
        f"({first.seconds / feature_hit.seconds:.2f}x); vision + fusion {vision_s:.2f} s; answers with and without "
        f"the caches identical: {identical}; {others_note(first, second, feature_hit)}")
    say(f"  estimated at 32 layers: {full_ratio:.1f}x with both caches, {features_full_ratio:.2f}x with the feature "
        f"cache alone")
    return [{"name": "vl_cache_ttft", "ours": second.seconds, "reference": first.seconds, "unit": "s",
             "ratio": first.seconds / second.seconds, "layers": layers, "image_size": size,
             "answers_identical": identical, "vision_s": vision_s, "feature_cache_only_s": feature_hit.seconds,
             "feature_cache_only_ratio": first.seconds / feature_hit.seconds,
             "ratio_at_32_layers_estimate": full_ratio, "feature_cache_only_ratio_at_32_layers": features_full_ratio,
             "peak_rss_mb": max(t.peak_rss_mb for t in (first, second, feature_hit)),
             "others": max(t.others for t in (first, second, feature_hit)),
             "ours_is": "second question (features + prompt prefix cached)", "reference_is": "first question"}]
