"""Florence-VL evaluation on a generated world split (`florence-vl world generate`).

Every question of every image is asked once (the image's features computed once, its questions batched),
with the instruction the training data uses (short answer, or the option's letter); then:
- VQA accuracy (VQAv2 normalisation and metric over the ten annotator answers), overall and per type;
- POPE accuracy / precision / recall / F1 / yes-ratio for the random, popular and adversarial settings;
- text reading exact match ("read" questions; whitespace and case folded);
- chart relaxed accuracy (chart_* questions, ChartQA's 5% tolerance);
- multiple-choice accuracy (the option letter);
- the majority-answer baseline: each question answered with the most common training answer of its type
  (`baseline_train_scenes` train scenes), scored like the model, overall and per type. A model at this number
  answers from the question alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from ..data.formats import MC_ANSWER, POPE_SETTINGS, SHORT_ANSWER, read_json, read_jsonl, read_records
from ..errors import InputError
from .metrics import format_table, pope_metrics, relaxed_accuracy, vqa_accuracy


def instruction(question: str, qtype: str) -> str:
    return f"{question}\n{MC_ANSWER if qtype == 'multiple_choice' else SHORT_ANSWER}"


def _letter(text: str) -> str:
    text = (text or "").strip()
    return text[:1].upper() if text else ""


def majority_answers(n_scenes: int) -> dict[str, str]:
    """The most common answer of each question type over the first `n_scenes` train scenes."""
    from collections import Counter

    from ..data.world import iter_scenes

    counts: dict[str, Counter] = defaultdict(Counter)
    for scene in iter_scenes("train", n=n_scenes):
        for qa in scene.record.get("qa", []):
            counts[qa["type"]][qa["answer"]] += 1
    return {qtype: c.most_common(1)[0][0] for qtype, c in counts.items()}


def evaluate_vl(vl, data_dir: str | Path, *, limit: int | None = None, max_new_tokens: int = 16,
                batch_size: int = 32, progress: bool = True, baseline_train_scenes: int = 500) -> dict:
    data = Path(data_dir)
    if not (data / "records.jsonl").exists():
        raise InputError(f"{data} is not a generated split (no records.jsonl); make one with `florence-vl world generate`")
    records = read_records(data)[:limit] if limit else read_records(data)
    annotations = {}
    if (data / "vqa_annotations.json").exists():
        annotations = {a["question_id"]: a for a in read_json(data / "vqa_annotations.json")["annotations"]}
    answers: dict[tuple[str, str], str] = {}
    rows = []
    for record in tqdm(records, desc="florence-vl eval", unit="img", disable=not progress):
        qas = record.get("qa", [])
        if not qas:
            continue
        prompts = [instruction(q["question"], q["type"]) for q in qas]
        preds = vl.ask_many(data / record["image"], prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
        for qa, pred in zip(qas, preds):
            answers[(record["image"], qa["question"])] = pred
            qid = record["image_id"] * 1000 + qa["id"]
            gts = [a["answer"] for a in annotations[qid]["answers"]] if qid in annotations else [qa["answer"]] * 10
            rows.append({"type": qa["type"], "pred": pred, "answer": qa["answer"], "vqa": vqa_accuracy(pred, gts),
                         "gts": gts})
    by_type = defaultdict(list)
    for row in rows:
        by_type[row["type"]].append(row)
    result: dict = {"images": len(records), "questions": len(rows),
                    "vqa_accuracy": sum(r["vqa"] for r in rows) / len(rows) if rows else 0.0,
                    "vqa_by_type": {t: {"accuracy": sum(r["vqa"] for r in rs) / len(rs), "n": len(rs)}
                                    for t, rs in sorted(by_type.items())}}
    if baseline_train_scenes > 0 and rows:
        majority = majority_answers(baseline_train_scenes)
        scores = {t: [vqa_accuracy(majority.get(t, ""), r["gts"]) for r in rs] for t, rs in by_type.items()}
        result["majority_baseline"] = {
            "train_scenes": baseline_train_scenes, "answers": majority,
            "vqa_accuracy": sum(sum(v) for v in scores.values()) / len(rows),
            "by_type": {t: sum(v) / len(v) for t, v in sorted(scores.items())}}
    read = by_type.get("read", [])
    result["text_reading_exact_match"] = {
        "value": sum(" ".join(r["pred"].lower().split()) == " ".join(r["answer"].lower().split()) for r in read)
        / len(read) if read else None, "n": len(read)}
    chart = [r for t, rs in by_type.items() if t.startswith("chart") for r in rs]
    result["chart_relaxed_accuracy"] = {
        "value": sum(relaxed_accuracy(r["pred"], r["answer"]) for r in chart) / len(chart) if chart else None,
        "n": len(chart)}
    mc = by_type.get("multiple_choice", [])
    result["multiple_choice_accuracy"] = {
        "value": sum(_letter(r["pred"]) == r["answer"].upper() for r in mc) / len(mc) if mc else None, "n": len(mc)}
    images = {r["image"] for r in records}
    pope = {}
    for setting in POPE_SETTINGS:
        path = data / f"pope_{setting}.jsonl"
        if not path.exists():
            continue
        lines = [line for line in read_jsonl(path) if line["image"] in images]
        preds = [answers.get((line["image"], line["text"])) for line in lines]
        kept = [(p, line["label"]) for p, line in zip(preds, lines) if p is not None]
        if kept:
            pope[setting] = pope_metrics([p for p, _ in kept], [y for _, y in kept])
    result["pope"] = pope
    result["examples"] = [{k: v for k, v in r.items() if k != "gts"} for r in rows[:20]]
    return result


def report_table(result: dict) -> str:
    baseline = result.get("majority_baseline")
    rows = [{"metric": "VQA accuracy (all)", "value": result["vqa_accuracy"], "n": result["questions"]}]
    if baseline:
        rows.append({"metric": "  majority answer per type", "value": baseline["vqa_accuracy"], "n": result["questions"]})
    for t, v in result["vqa_by_type"].items():
        rows.append({"metric": f"  {t}", "value": v["accuracy"], "n": v["n"]})
        if baseline and t in baseline["by_type"]:
            rows.append({"metric": f"    {t}, majority answer", "value": baseline["by_type"][t], "n": v["n"]})
    for key, label in (("text_reading_exact_match", "text reading exact match"),
                       ("chart_relaxed_accuracy", "chart relaxed accuracy"),
                       ("multiple_choice_accuracy", "multiple-choice accuracy")):
        rows.append({"metric": label, "value": result[key]["value"], "n": result[key]["n"]})
    for setting, m in result["pope"].items():
        for name in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            rows.append({"metric": f"POPE {setting} {name}", "value": m[name], "n": m["n"]})
    return format_table(rows, ["metric", "value", "n"])
