"""What int8 dynamic quantization of the LLM costs in accuracy: the shipped Florence-VL-nano on the nano test split.

Reference: models/nano/florence-vl as shipped (fp32). Ours: the same model with every nn.Linear of its LLM replaced
by torch.ao dynamic int8 quantization (`llm_decode.quantize_int8`); Florence-2 and the projector are unchanged.
Both answer every question of the first `limit` images of data/test (florence_vl.eval.vl_eval, greedy). The line
compares VQA accuracy; a details line gives the answer agreement and each metric's change. The nano LLM is tiny
(d=192, 3 layers), so its int8 speed says nothing about the 3B model (that is llm_decode's job).

Needs data/test (`florence-vl world generate --split test --n 500 --out data/test`); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

from common import timed

ROOT = Path(__file__).resolve().parent.parent


def run(quick: bool = False, limit: int | None = None, verbose: bool = True) -> list[dict]:
    from florence_vl.eval.vl_eval import evaluate_vl
    from florence_vl.vl.chat import FlorenceVL
    from llm_decode import quantize_int8

    say = print if verbose else (lambda *a, **k: None)
    data = ROOT / "data" / "test"
    model_dir = ROOT / "models" / "nano" / "florence-vl"
    if not (data / "records.jsonl").exists() or not model_dir.exists():
        say(f"  skipped: needs {data} and {model_dir}")
        return []
    limit = limit or (20 if quick else 150)
    vl = FlorenceVL.from_pretrained(str(model_dir))
    with timed() as t_ref:
        ref = evaluate_vl(vl, data, limit=limit, progress=False)
    vl.model.llm = quantize_int8(vl.model.llm.float())
    with timed() as t_int8:
        q = evaluate_vl(vl, data, limit=limit, progress=False)  # Florence-2 unchanged: its cached features reused
    same = sum(a["pred"] == b["pred"] for a, b in zip(ref["examples"], q["examples"]))
    say(f"  Florence-VL-nano, {ref['images']} test images, {ref['questions']} questions: VQA accuracy fp32 "
        f"{ref['vqa_accuracy']:.3f}, int8 LLM {q['vqa_accuracy']:.3f}; first {len(ref['examples'])} answers equal: "
        f"{same}; eval {t_ref.seconds:.0f} s / {t_int8.seconds:.0f} s (int8 reuses cached image features)")
    changes = {}
    for key in ("text_reading_exact_match", "chart_relaxed_accuracy", "multiple_choice_accuracy"):
        a, b = ref[key]["value"], q[key]["value"]
        if a is not None and b is not None:
            changes[key] = (a, b)
    for setting in ref["pope"]:
        changes[f"pope_{setting}_f1"] = (ref["pope"][setting]["f1"], q["pope"].get(setting, {}).get("f1"))
    for t in ref["vqa_by_type"]:
        changes[f"vqa_{t}"] = (ref["vqa_by_type"][t]["accuracy"], q["vqa_by_type"].get(t, {}).get("accuracy"))
    say("  " + "; ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in changes.items() if b is not None))
    return [{"name": "vl_int8_nano_vqa", "ours": q["vqa_accuracy"], "reference": ref["vqa_accuracy"],
             "unit": "VQA acc", "ratio": q["vqa_accuracy"] / max(ref["vqa_accuracy"], 1e-9),
             "images": ref["images"], "questions": ref["questions"], "examples_equal": same,
             "examples": len(ref["examples"]), "metric_changes": changes,
             "peak_rss_mb": max(t_ref.peak_rss_mb, t_int8.peak_rss_mb), "others": max(t_ref.others, t_int8.others),
             "ours_is": "LLM Linear layers int8 (torch.ao dynamic)", "reference_is": "shipped fp32"}]
