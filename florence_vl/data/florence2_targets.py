"""Florence-2 task examples from a nano-world scene: prompts and targets in the published output form."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..florence2.coordinates import encode_box, encode_polygons, encode_quad
from ..florence2.tasks import build_prompt
from .spatial import reading_order_key

if TYPE_CHECKING:
    from .world import Scene


def florence2_examples(scene: Scene | dict) -> list[dict]:
    """Examples {"task", "prompt", "target"[, "text" | "region"]} for every task that applies to the scene.

    Targets are in the published output form: phrases followed by their <loc_k> boxes in reading order;
    REGION_TO_CATEGORY / REGION_TO_DESCRIPTION repeat the region's box after the text as the published
    model does; REGION_TO_OCR and OCR are plain text; OCR joins the texts in reading order with spaces.
    """
    record = scene if isinstance(scene, dict) else scene.record
    size = tuple(record["size"])
    objects = sorted(record["objects"], key=lambda o: reading_order_key(o["bbox"]))
    texts = sorted(record["texts"], key=lambda t: reading_order_key(t["bbox"]))
    out: list[dict] = []

    def add(task, target, text=None, region=None):
        example = {"task": task, "prompt": build_prompt(task, text=text, region=region, image_size=size),
                   "target": target}
        if text is not None:
            example["text"] = text
        if region is not None:
            example["region"] = list(region)
        out.append(example)

    def box(b):
        return encode_box(b, size)

    captions = record["captions"]
    add("<CAPTION>", captions["brief"])
    add("<DETAILED_CAPTION>", captions["detailed"])
    add("<MORE_DETAILED_CAPTION>", captions["more_detailed"])
    regions = [(o["description"], o["bbox"]) for o in objects]
    regions += [(f"{t['plate']['color']} sign", t["plate"]["bbox"]) for t in texts if t["role"] == "sign"]
    regions += [(f"{b['color']} bar", b["bbox"]) for b in record["bars"]]
    regions.sort(key=lambda r: reading_order_key(r[1]))
    if objects:
        add("<OD>", "".join(o["class"] + box(o["bbox"]) for o in objects))
    if regions:
        add("<DENSE_REGION_CAPTION>", "".join(d + box(b) for d, b in regions))
        add("<REGION_PROPOSAL>", "".join(box(b) for _, b in regions))
    if record["grounding"]["phrases"]:
        add("<CAPTION_TO_PHRASE_GROUNDING>",
            "".join(p["phrase"] + "".join(box(b) for b in p["boxes"]) for p in record["grounding"]["phrases"]),
            text=record["grounding"]["caption"])
    for o in objects:
        polygons = encode_polygons(o["segmentation"], size)
        add("<REFERRING_EXPRESSION_SEGMENTATION>", polygons, text=o["referring"])
        add("<REGION_TO_SEGMENTATION>", polygons, region=o["bbox"])
        add("<REGION_TO_CATEGORY>", o["class"] + box(o["bbox"]), region=o["bbox"])
        add("<REGION_TO_DESCRIPTION>", o["description"] + box(o["bbox"]), region=o["bbox"])
    queries: dict[str, list] = {}
    for o in objects:
        queries.setdefault(o["class"], []).append(o["bbox"])
    for o in objects:
        queries.setdefault(f"{o['color']} {o['class']}", []).append(o["bbox"])
    for query, boxes in queries.items():
        add("<OPEN_VOCABULARY_DETECTION>", query + "".join(box(b) for b in boxes), text=query)
    if texts:
        add("<OCR>", " ".join(t["text"] for t in texts))
        add("<OCR_WITH_REGION>", "".join(t["text"] + encode_quad(t["quad"], size) for t in texts))
        for t in texts:
            add("<REGION_TO_OCR>", t["text"], region=t["bbox"])
    return out
