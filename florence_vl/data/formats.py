"""The nano world in standard file formats (../shared/WORLD.md "File formats"), so outside tools read it.

Every writer takes the records of `world.generate_scene` (with "image" and "image_id" set, as
`write_split` does) and returns plain JSON-able data; `write_split` draws a split and writes them all:

    out_dir/images/000000.png ...        the images (PNG)
    out_dir/records.jsonl                one world record per line (the source of everything else)
    out_dir/detection_coco.json          COCO detection: bbox [x, y, w, h], polygons, area, iscrowd 0
    out_dir/ocr.jsonl                    {"image", "texts": [{"text", "quad": [8 numbers]}]} per image
    out_dir/captions_coco.json           COCO captions, brief level (<CAPTION>)
    out_dir/captions_detailed_coco.json, captions_more_detailed_coco.json   the other two levels
    out_dir/florence2_tasks.jsonl        {"image", "task", "prompt", "target"[, "text" | "region"]}
    out_dir/llava_pretrain.json          LLaVA conversations: detailed captions (stage 1)
    out_dir/llava_instruct.json          LLaVA conversations: an image's questions, <= 8 per conversation
    out_dir/vqa_questions.json, vqa_annotations.json   VQAv2 layout (10 identical answers each)
    out_dir/pope_{random,popular,adversarial}.jsonl    {"question_id", "image", "text", "label"}
    out_dir/manifest.json                split, seed, count and the file list

Image paths are relative to out_dir ("images/000000.png"), the same string in every file; COCO image
ids are the image indices (0-based), annotation ids count from 1, question ids are image_id * 1000 + k.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterable

from .florence2_targets import florence2_examples
from .vocabulary import CATEGORY_IDS
from .world import generate_scene

POPE_SETTINGS = ("random", "popular", "adversarial")
CAPTION_LEVELS = {"brief": "captions_coco.json", "detailed": "captions_detailed_coco.json",
                  "more_detailed": "captions_more_detailed_coco.json"}
SHORT_ANSWER = "Answer the question using a single word or phrase."
MC_ANSWER = "Answer with the option's letter from the given choices directly."
DESCRIBE_PROMPT = "Describe the image in detail."


def _images(records: list[dict]) -> list[dict]:
    return [{"id": r["image_id"], "file_name": r["image"], "width": r["size"][0], "height": r["size"][1]}
            for r in records]


def _info(records: list[dict], what: str) -> dict:
    split = records[0]["split"] if records else ""
    return {"description": f"nano world {split} {what}", "version": "1.0"}


def coco_detection(records: list[dict]) -> dict:
    """COCO instances JSON of the shapes (texts and bars are not COCO categories)."""
    annotations = []
    for r in records:
        for o in r["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": r["image_id"],
                                "category_id": CATEGORY_IDS[o["class"]], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "segmentation": o["segmentation"], "area": o["area"], "iscrowd": 0,
                                "color": o["color"], "size": o["size"]})
    categories = [{"id": i, "name": name, "supercategory": "shape"} for name, i in CATEGORY_IDS.items()]
    return {"info": _info(records, "detection"), "licenses": [], "images": _images(records),
            "annotations": annotations, "categories": categories}


def coco_captions(records: list[dict], level: str = "brief") -> dict:
    annotations = [{"id": i + 1, "image_id": r["image_id"], "caption": r["captions"][level]}
                   for i, r in enumerate(records)]
    return {"info": _info(records, f"captions ({level})"), "licenses": [], "images": _images(records),
            "annotations": annotations}


def ocr_lines(records: list[dict]) -> list[dict]:
    return [{"image": r["image"], "texts": [{"text": t["text"], "quad": t["quad"], "bbox": t["bbox"]}
                                            for t in r["texts"]]} for r in records]


def florence2_lines(records: list[dict]) -> list[dict]:
    return [{"image": r["image"], **example} for r in records for example in florence2_examples(r)]


def question_instruction(item: dict) -> str:
    """A world question as the instruction data asks it: the question, then how to answer (a word, or a letter)."""
    return f"{item['question']}\n{MC_ANSWER if item['type'] == 'multiple_choice' else SHORT_ANSWER}"


def llava_pretrain(records: list[dict]) -> list[dict]:
    return [{"id": f"{r['image_id']:06d}", "image": r["image"],
             "conversations": [{"from": "human", "value": f"<image>\n{DESCRIBE_PROMPT}"},
                               {"from": "gpt", "value": r["captions"]["more_detailed"]}]} for r in records]


def llava_instruct(records: list[dict], max_turns: int = 8) -> list[dict]:
    """The questions of each image as conversations of at most `max_turns` question-answer pairs, in an order
    shuffled per image (seeded by its id). The generator writes an image's questions grouped by kind and answer
    (counts first, the "yes" existence questions before the "no" ones), and a model trained on that order learns
    to answer from a question's turn number instead of from the image."""
    out = []
    for r in records:
        qa = list(r["qa"])
        random.Random(f"llava-instruct-{r['image_id']}").shuffle(qa)
        for start in range(0, len(qa), max_turns):
            turns = []
            for i, item in enumerate(qa[start:start + max_turns]):
                turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question_instruction(item)})
                turns.append({"from": "gpt", "value": item["answer"]})
            out.append({"id": f"{r['image_id']:06d}_{start // max_turns}", "image": r["image"],
                        "conversations": turns})
    return out


def _answer_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def vqa(records: list[dict]) -> tuple[dict, dict]:
    """VQAv2 questions and annotations (each answer given 10 times, as VQAv2's ten annotators)."""
    questions, annotations = [], []
    for r in records:
        for item in r["qa"]:
            qid = r["image_id"] * 1000 + item["id"]
            questions.append({"image_id": r["image_id"], "question": item["question"], "question_id": qid})
            annotations.append({"question_id": qid, "image_id": r["image_id"], "question_type": item["type"],
                                "answer_type": _answer_type(item["answer"]),
                                "multiple_choice_answer": item["answer"],
                                "answers": [{"answer": item["answer"], "answer_confidence": "yes", "answer_id": k + 1}
                                            for k in range(10)]})
    head = {"info": _info(records, "vqa"), "license": {}, "data_type": "nano", "data_subtype": records[0]["split"]
            if records else ""}
    return ({**head, "task_type": "Open-Ended", "questions": questions},
            {**head, "annotations": annotations})


def pope_lines(records: list[dict], setting: str) -> list[dict]:
    if setting not in POPE_SETTINGS:
        raise ValueError(f"POPE setting is one of {POPE_SETTINGS}, got {setting!r}")
    return [{"question_id": r["image_id"] * 1000 + item["id"], "image": r["image"], "text": item["question"],
             "label": item["answer"], "category": setting}
            for r in records for item in r["qa"] if setting in item.get("pope", ())]


# ------------------------------------------------------------------------------------------ files
def write_json(path: Path, data: Any) -> Path:
    path = Path(path)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_records(out_dir: Path) -> list[dict]:
    """The world records a `write_split` folder holds (image paths relative to that folder)."""
    return read_jsonl(Path(out_dir) / "records.jsonl")


def _write_scene(job: tuple[str, int, int, str]) -> dict:
    split, seed, index, out = job
    scene = generate_scene(seed + index, split)
    name = f"images/{index:06d}.png"
    scene.image.save(Path(out) / name, format="PNG")
    return {"image": name, "image_id": index, **scene.record}


def write_split(split: str, n: int, out_dir, seed: int = 0, progress: bool = True, workers: int = 1) -> dict[str, Path]:
    """Draw scenes seed .. seed+n-1 of `split` and write images plus every format; returns the paths.
    `workers` processes draw the scenes (each scene is a function of its seed: the files are the same)."""
    from multiprocessing import get_context

    from tqdm.auto import tqdm

    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    jobs = [(split, seed, index, str(out)) for index in range(n)]
    bar = dict(total=n, desc=f"nano world {split}", disable=not progress, unit="img")
    if workers > 1 and n > 1:
        with get_context("fork").Pool(workers) as pool:
            records = list(tqdm(pool.imap(_write_scene, jobs, chunksize=16), **bar))
    else:
        records = [_write_scene(job) for job in tqdm(jobs, **bar)]
    paths: dict[str, Path] = {"images": images, "records": write_jsonl(out / "records.jsonl", records)}
    paths["detection"] = write_json(out / "detection_coco.json", coco_detection(records))
    paths["ocr"] = write_jsonl(out / "ocr.jsonl", ocr_lines(records))
    for level, filename in CAPTION_LEVELS.items():
        key = "captions" if level == "brief" else f"captions_{level}"
        paths[key] = write_json(out / filename, coco_captions(records, level))
    paths["florence2"] = write_jsonl(out / "florence2_tasks.jsonl", florence2_lines(records))
    paths["llava_pretrain"] = write_json(out / "llava_pretrain.json", llava_pretrain(records))
    paths["llava_instruct"] = write_json(out / "llava_instruct.json", llava_instruct(records))
    questions, annotations = vqa(records)
    paths["vqa_questions"] = write_json(out / "vqa_questions.json", questions)
    paths["vqa_annotations"] = write_json(out / "vqa_annotations.json", annotations)
    for setting in POPE_SETTINGS:
        paths[f"pope_{setting}"] = write_jsonl(out / f"pope_{setting}.jsonl", pope_lines(records, setting))
    manifest = {"split": split, "seed": seed, "n": n, "files": {k: str(p.relative_to(out)) for k, p in paths.items()}}
    paths["manifest"] = write_json(out / "manifest.json", manifest)
    return paths
