"""The Florence-2 task table: every task is a token, a prompt template, an input kind and a parse kind.

The prompt strings are the published ones (microsoft/Florence-2 processor, transformers' Florence2Processor).
Tasks that take input accept it in user terms (a phrase, or a box in pixels) and encode it here, so a
caller never writes <loc_k> tokens by hand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from ..errors import InputError
from .coordinates import encode_box
from .special_tokens import strip_special_tokens

InputKind = Literal["none", "text", "region"]
ParseKind = Literal[
    "pure_text",
    "description_with_bboxes",
    "bboxes",
    "phrase_grounding",
    "polygons",
    "description_with_bboxes_or_polygons",
    "ocr",
]


@dataclass(frozen=True)
class Task:
    token: str
    prompt: str  # "{input}" marks where the phrase or the encoded region goes
    input: InputKind
    parse: ParseKind
    description: str

    @property
    def name(self) -> str:
        return self.token.strip("<>")


TASKS: dict[str, Task] = {
    t.token: t
    for t in [
        Task("<CAPTION>", "What does the image describe?", "none", "pure_text", "one-sentence caption"),
        Task("<DETAILED_CAPTION>", "Describe in detail what is shown in the image.", "none", "pure_text",
             "detailed caption"),
        Task("<MORE_DETAILED_CAPTION>", "Describe with a paragraph what is shown in the image.", "none",
             "pure_text", "paragraph caption"),
        Task("<OD>", "Locate the objects with category name in the image.", "none", "description_with_bboxes",
             "object detection: boxes with category names"),
        Task("<DENSE_REGION_CAPTION>", "Locate the objects in the image, with their descriptions.", "none",
             "description_with_bboxes", "boxes with a short description each"),
        Task("<REGION_PROPOSAL>", "Locate the region proposals in the image.", "none", "bboxes",
             "class-agnostic boxes"),
        Task("<CAPTION_TO_PHRASE_GROUNDING>", "Locate the phrases in the caption: {input}", "text",
             "phrase_grounding", "boxes for the phrases of --text"),
        Task("<REFERRING_EXPRESSION_SEGMENTATION>", "Locate {input} in the image with mask", "text", "polygons",
             "polygon mask of the object --text refers to"),
        Task("<REGION_TO_SEGMENTATION>", "What is the polygon mask of region {input}", "region", "polygons",
             "polygon mask of the object inside --region"),
        Task("<OPEN_VOCABULARY_DETECTION>", "Locate {input} in the image.", "text",
             "description_with_bboxes_or_polygons", "boxes (or polygons) of the objects named by --text"),
        Task("<REGION_TO_CATEGORY>", "What is the region {input}?", "region", "pure_text",
             "category of the object inside --region"),
        Task("<REGION_TO_DESCRIPTION>", "What does the region {input} describe?", "region", "pure_text",
             "description of the object inside --region"),
        Task("<REGION_TO_OCR>", "What text is in the region {input}?", "region", "pure_text",
             "text inside --region"),
        Task("<OCR>", "What is the text in the image?", "none", "pure_text", "all text in the image"),
        Task("<OCR_WITH_REGION>", "What is the text in the image, with regions?", "none", "ocr",
             "text lines with their quadrilaterals"),
    ]
}


def get_task(name: str) -> Task:
    """Accept "<OD>", "OD" or "od"."""
    if not isinstance(name, str):
        raise InputError(f"a task is a name like \"<OD>\" or \"OD\", not {type(name).__name__}")
    token = "<" + name.strip().strip("<>").upper() + ">"
    if token not in TASKS:
        known = ", ".join(t.name for t in TASKS.values())
        raise InputError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[token]


def parse_region(region: str | Sequence[float]) -> tuple[float, float, float, float]:
    """A region as "x0,y0,x1,y1" or four numbers, in pixels of the original image."""
    if isinstance(region, str):
        parts = [p for p in re.split(r"[,\s]+", region.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"region {region!r} is not four numbers x0,y0,x1,y1") from None
    else:
        try:
            values = [float(v) for v in region]
        except (TypeError, ValueError):
            raise InputError(f"region {region!r} is not four numbers x0,y0,x1,y1") from None
    if len(values) != 4:
        raise InputError(f"a region needs four numbers x0,y0,x1,y1, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"region {values} has a coordinate that is not a finite number")
    x0, y0, x1, y1 = values
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"region {values} is empty: it needs x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def build_prompt(
    task: Task | str,
    text: str | None = None,
    region: str | Sequence[float] | None = None,
    image_size: tuple[int, int] | None = None,
) -> str:
    """The exact text the encoder sees for a task. `image_size` is (width, height), needed for regions."""
    task = get_task(task) if isinstance(task, str) else task
    if task.input == "none":
        if text or region is not None:
            raise InputError(f"{task.token} takes no input; drop --text/--region")
        return task.prompt
    if task.input == "text":
        if region is not None:
            raise InputError(f"{task.token} takes --text, not --region")
        # User text never reaches the encoder as control tokens: no <loc_k>, task or special tokens.
        clean = strip_special_tokens(text or "").strip()
        if not clean:
            raise InputError(f"{task.token} needs --text (the phrase to look for)")
        return task.prompt.format(input=clean)
    if text:
        raise InputError(f"{task.token} takes --region x0,y0,x1,y1, not --text")
    if region is None:
        raise InputError(f"{task.token} needs --region x0,y0,x1,y1 (pixels)")
    if image_size is None:
        raise ValueError("image_size is needed to encode a region")
    return task.prompt.format(input=encode_box(parse_region(region), image_size))
