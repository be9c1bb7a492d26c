"""Text and image pre-processing for Florence-VL: chat segments -> token ids with image markers, labels;
images -> pad-to-square with the mean colour (as the release does) -> Florence-2 pixel values."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .model import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .templates import IMAGE, Template, get_template, render, render_with_tokenizer


def expand_to_square(image: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side (centred) with `color`, so the aspect ratio survives the square resize."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), color)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


class VLProcessor:
    """Turns conversations and images into model inputs for one LLM tokenizer and one Florence-2 geometry."""

    def __init__(self, tokenizer, image_processor, template: str = "phi3", image_aspect_ratio: str = "pad",
                 max_length: int | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template_name = template
        self.template: Template | None = None if template == "tokenizer" else get_template(template)
        self.image_aspect_ratio = image_aspect_ratio
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- images ------------------------------------------------------------------------------------

    @property
    def mean_color(self) -> tuple[int, int, int]:
        return tuple(int(round(m * 255)) for m in self.image_processor.image_mean)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        images = [im.convert("RGB") for im in images]
        if self.image_aspect_ratio == "pad":
            images = [expand_to_square(im, self.mean_color) for im in images]
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    # -- text --------------------------------------------------------------------------------------

    def _segments(self, turns):
        if self.template is None:
            return render_with_tokenizer(self.tokenizer, turns)
        return render(self.template, turns)

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for k, piece in enumerate(text.split(IMAGE)):
            if k:
                ids.append(IMAGE_TOKEN_INDEX)
            if piece:
                ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        system = self.template.system if self.template else ""
        if bos is None or (self.tokenizer.bos_token and self.tokenizer.bos_token in system):
            return []
        if self.template is None:
            return []  # a tokenizer template writes its own
        return [bos]

    def encode(self, turns: list[tuple[str, str | None]]) -> tuple[list[int], list[int]]:
        """Token ids (with IMAGE_TOKEN_INDEX markers) and labels (IGNORE_INDEX outside the targets)."""
        ids, labels = self._bos(), []
        labels = [IGNORE_INDEX] * len(ids)
        for text, target in self._segments(turns):
            piece = self._ids(text)
            ids += piece
            labels += piece if target else [IGNORE_INDEX] * len(piece)
        if self.max_length and len(ids) > self.max_length:
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    def prompt(self, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Ids of a chat prompt (earlier turns, then `question`), open for the assistant's answer."""
        if IMAGE not in question and not history:
            question = IMAGE + "\n" + question
        return self.encode(list(history) + [(question, None)])[0]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end an answer: EOS and the template's message end."""
        stops = {self.tokenizer.eos_token_id} - {None}
        sep = self.template.sep if self.template is not None else None
        if sep and sep.strip():
            ids = self.tokenizer(sep, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                stops.add(ids[0])
        elif sep == "\n":
            ids = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                stops.add(ids[0])
        return sorted(stops)
