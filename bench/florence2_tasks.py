"""<OD> and <CAPTION> over N images: our task runner against plain transformers, one image at a time.

Reference (what a user of transformers writes): Florence2Processor(text=task, images=image) ->
Florence2ForConditionalGeneration.generate -> batch_decode -> post_process_generation, one image at a time, in
the default dtype (fp32), eager. Ours: `Florence2.run_requests` on the same weights, all N requests in batches
of `batch_size` (DaViT `vision_batch_size` images at a time), in the dtype and with the vision path of
`florence_vl.florence2.speed.fast_florence2` (docs/performance.md says why).

Florence-2-base geometry, random weights (seed 0), random-noise images of mixed sizes resized to 768 px
(--quick: 384 px). Both paths decode the same way (greedy, or `num_beams`) and exactly `max_new_tokens` tokens
(the special ids are suppressed in both, so a random model never stops early: equal work). The suppressed list is
long here (~50k ids: the small bench tokenizer leaves most of the 51k embedding unused), and transformers'
`suppress_tokens` rebuilds its mask with torch.isin on every step; a bench device, not the workload, so the
reference gets the same precomputed mask as ours (`runner.SuppressMask`, same scores). Outputs are compared text
by text; equal texts are expected when ours computes in fp32, and are counted otherwise.

Details: the same-dtype ratio (the reference loop on a plain copy of the model in our dtype, over the first
`same_dtype_images` images), i.e. what batching and our runner add beyond the dtype.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Florence2Processor, LogitsProcessorList

from common import matmul_peak, others_note, timed
from florence2_batching import build, make_requests, stage_timer, suppressed_ids
from florence_vl.florence2.geometry import num_image_tokens
from florence_vl.florence2.runner import SuppressMask
from florence_vl.images import load_image

TASKS = {"<OD>": 64, "<CAPTION>": 20}       # new tokens: a typical <OD> answer is tens of tokens, a caption ~20


def reference_run(model, processor, requests, task: str, max_new_tokens: int, num_beams: int, suppress) -> list:
    """Plain transformers, one image at a time."""
    texts = []
    vocab = model.get_output_embeddings().weight.shape[0]
    processors = LogitsProcessorList([SuppressMask(suppress, vocab)])
    with torch.inference_mode():
        for request in requests:
            image = load_image(request.image)
            inputs = processor(text=task, images=image, return_tensors="pt")
            ids = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                 pixel_values=inputs["pixel_values"].to(model.dtype), max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, do_sample=False, logits_processor=processors,
                                 early_stopping=num_beams > 1)
            text = processor.batch_decode(ids, skip_special_tokens=False)[0]
            processor.post_process_generation(text, task=task, image_size=image.size)
            texts.append(" ".join(text.replace("</s>", " ").replace("<s>", " ").replace("<pad>", " ").split()))
    return texts


def run(quick: bool = False, images: int | None = None, num_beams: int | None = None, verbose: bool = True,
        batch_size: int | None = None, same_dtype_images: int | None = None) -> list[dict]:
    from florence_vl.florence2.speed import fast_florence2

    say = print if verbose else (lambda *a, **k: None)
    size = 384 if quick else 768
    n = images or (4 if quick else 32)
    beams = num_beams or (1 if quick else 3)
    batch = batch_size or (n if quick else 8)
    florence, info = build(size)
    reference_model = florence.model                       # fp32, eager: transformers as it comes
    ip = florence.image_processor
    ip.image_seq_length = num_image_tokens(reference_model.config.vision_config, size)
    parsers = {"pure_text": {}, "description_with_bboxes": {}, "bboxes": {}, "polygons": {}, "ocr": {"area_threshold": 0.0},
               "phrase_grounding": {"banned_grounding_tokens": []}, "description_with_polygons": {},
               "description_with_bboxes_or_polygons": {}}  # the published processor_config.json's parse tasks
    processor = Florence2Processor(image_processor=ip, tokenizer=florence.tokenizer, post_processor_config=parsers)
    suppress = suppressed_ids(florence)
    start = time.perf_counter()
    ours, how = fast_florence2(florence)                   # a converted copy; the reference keeps its weights
    prepare_s = time.perf_counter() - start
    say(f"Florence-2-base {info['params'] / 1e6:.1f}M params, {size} px ({florence.num_image_tokens} image tokens), "
        f"{n} images, beams {beams}, batch {batch}; ours: {how} (prepared in {prepare_s:.1f} s)")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    peak_name = "bf16" if ours.dtype == torch.bfloat16 else "fp32"
    same_n = min(n, same_dtype_images or (2 if quick else 8))
    same_model = None if ours.dtype == reference_model.dtype else copy.deepcopy(reference_model).to(ours.dtype)
    rows = []
    for task, new_tokens in TASKS.items():
        new_tokens = 8 if quick else new_tokens
        requests = [r.__class__(r.image, task) for r in make_requests(n)]
        options = dict(num_beams=beams, max_new_tokens=new_tokens, with_scores=False, suppress_tokens=suppress)
        # warm-up (kernels, compiled graphs for this batch shape) on two requests, and the FLOP count of ours
        ours.run_requests(requests[:1], batch_size=1, **dict(options, max_new_tokens=2))
        reference_run(reference_model, processor, requests[:1], task, 2, beams, suppress)
        counter = FlopCounterMode(display=False)
        with counter:
            reference_run(reference_model, processor, requests[:1], task, new_tokens, beams, suppress)
        flops_per_image = counter.get_total_flops()
        with timed() as t_ours, stage_timer(ours.model) as s_ours:
            got = ours.run_requests(requests, batch_size=batch, **options)
        with timed() as t_ref, stage_timer(reference_model) as s_ref:
            want = reference_run(reference_model, processor, requests, task, new_tokens, beams, suppress)
        for stages, t in ((s_ours, t_ours), (s_ref, t_ref)):
            stages["decode"] = t.seconds - stages["vision"] - stages["encoder"]
        same = sum(" ".join(a.text.split()) == b for a, b in zip(got, want))
        if same_model is not None:                          # the reference loop in our dtype, first same_n images
            reference_run(same_model, processor, requests[:1], task, 2, beams, suppress)
            with timed() as t_same:
                reference_run(same_model, processor, requests[:same_n], task, new_tokens, beams, suppress)
            same_dtype_rate = same_n / t_same.seconds
        else:
            same_dtype_rate = n / t_ref.seconds
        name = "florence2_tasks_" + task.strip("<>").lower()
        gflops = flops_per_image * n / t_ours.seconds / 1e9
        row = {"name": name, "ours": n / t_ours.seconds, "reference": n / t_ref.seconds, "unit": "img/s",
               "ratio": t_ref.seconds / t_ours.seconds, "flops": flops_per_image * n, "gflops_per_s": gflops,
               "peak_fraction": gflops / peaks[peak_name], "peak_name": f"{peak_name} matmul",
               "peak_gflops_per_s": peaks[peak_name], "fp32_peak_gflops_per_s": peaks["fp32"],
               "bf16_peak_gflops_per_s": peaks["bf16"], "same_dtype_reference_img_s": same_dtype_rate,
               "same_dtype_ratio": (n / t_ours.seconds) / same_dtype_rate, "same_dtype_images": same_n, "images": n, "image_size": size, "num_beams": beams,
               "max_new_tokens": new_tokens, "batch_size": batch, "ours_is": how, "outputs_equal": same,
               "ours_s": t_ours.seconds, "reference_s": t_ref.seconds,
               "peak_rss_mb": max(t_ours.peak_rss_mb, t_ref.peak_rss_mb), "ours_peak_rss_mb": t_ours.peak_rss_mb,
               "reference_peak_rss_mb": t_ref.peak_rss_mb, "others": max(t_ours.others, t_ref.others),
               "ours_stages_s": s_ours, "reference_stages_s": s_ref}
        rows.append(row)
        say(f"  {task}: ours {t_ours.seconds:.1f} s, reference {t_ref.seconds:.1f} s; {same}/{n} texts equal; same-dtype "
            f"reference {same_dtype_rate:.3f} img/s over {same_n} images (ratio {row['same_dtype_ratio']:.2f}); "
            f"peak RSS ours {t_ours.peak_rss_mb:.0f} / reference {t_ref.peak_rss_mb:.0f} MiB; "
            f"{others_note(t_ours, t_ref)}")
        say("    seconds (vision / encoder / decode + rest): ours " + " / ".join(f"{s_ours[k]:.1f}" for k in
            ("vision", "encoder", "decode")) + ", reference " + " / ".join(f"{s_ref[k]:.1f}" for k in
                                                                        ("vision", "encoder", "decode")))
    return rows
