"""One task's result on one image, in the published output shape plus what a caller needs around it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskResult:
    """`output` has the published processor's shape for the task, e.g. for <OD>
    {"bboxes": [[x0, y0, x1, y1], ...], "labels": [...], "scores": [...]} in pixels of the original image;
    for <OCR_WITH_REGION> {"quad_boxes": [[8 numbers], ...], "labels": [...]}; for segmentation
    {"polygons": [[[x0, y0, x1, y1, ...], ...], ...], "labels": [...]}; for text tasks a string.
    """

    task: str                      # task token, e.g. "<OD>"
    output: Any                    # dict or str, see above
    text: str                      # the generated text with <loc_k> tokens, without <s>, </s>, <pad>
    image_size: tuple[int, int]    # (width, height) of the original image: the frame of every coordinate
    image: str | None = None       # where the image came from, when it was a file
    prompt: str = ""               # the prompt the encoder saw
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The published form {task: output}, with the image and the raw text beside it."""
        return {
            "image": self.image,
            "image_size": list(self.image_size),
            "task": self.task,
            "prompt": self.prompt,
            "text": self.text,
            "result": {self.task: self.output},
        }
