"""Florence-VL for users: load a checkpoint, ask about an image, get the answer (whole or streamed).

    from florence_vl import FlorenceVL
    vl = FlorenceVL.from_pretrained("nano")                   # or a checkpoint directory / hub id
    vl.chat("scene.png", "How many shapes are there?")        # -> "3"
    for piece in vl.chat("scene.png", "Describe the image.", stream=True): print(piece, end="")
    vl.answer(["a.png", "b.png"], ["What color is the star?", "Is there a cross?"])   # batched
"""

from __future__ import annotations

from pathlib import Path
from threading import Thread
from typing import Iterator, Sequence

import torch
from PIL import Image

from ..errors import InputError
from ..images import load_image
from .model import pad_rows
from .processor import VLProcessor


class FlorenceVL:
    def __init__(self, model, tokenizer, image_processor, template: str | None = None, source: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        template = template or model.config.template
        max_length = getattr(model.llm.config, "max_position_embeddings", None)
        self.processor = VLProcessor(tokenizer, image_processor, template, model.config.image_aspect_ratio,
                                     max_length=max_length)

    @classmethod
    def from_pretrained(cls, source: str | Path = "nano", *, dtype: torch.dtype | str | None = None,
                        template: str | None = None, allow_pickle: bool = False) -> "FlorenceVL":
        """Our own checkpoint format or the published LLaVA layout; "nano" is the shipped Florence-VL-nano."""
        from ..models import resolve_model
        from .checkpoint import load_florence_vl

        bundle = load_florence_vl(resolve_model(source, "florence_vl"), dtype=dtype, allow_pickle=allow_pickle)
        return cls(bundle.model, bundle.tokenizer, bundle.image_processor, template, source=str(source))

    def save_pretrained(self, out_dir: str | Path, *, storage_dtype: torch.dtype | str | None = None) -> Path:
        """Our checkpoint format; storage_dtype="bfloat16" halves the bytes (loaded back in today's dtype)."""
        from .checkpoint import FlorenceVLBundle, save_florence_vl

        return save_florence_vl(FlorenceVLBundle(self.model, self.tokenizer, self.image_processor, "florence-vl",
                                                 self.source), out_dir, storage_dtype=storage_dtype)

    # -- generation --------------------------------------------------------------------------------

    def _options(self, max_new_tokens: int, options: dict) -> dict:
        pad = self.processor.pad_id
        return dict(dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                         eos_token_id=self.processor.stop_token_ids()), **options)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def answer(self, images: Sequence, questions: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 64,
               **options) -> list[str]:
        """One answer per (image, question), `batch_size` at a time, greedy by default."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            batch_images = [load_image(im) for im in images[start:start + batch_size]]
            prompts = [self.processor.prompt(q) for q in questions[start:start + batch_size]]
            inputs = pad_rows(prompts, self.processor.pad_id, side="left")
            out = self.model.generate(**inputs, pixel_values=self.processor.pixel_values(batch_images),
                                      **self._options(max_new_tokens, options))
            answers += [self._decode(row) for row in out.tolist()]
        return answers

    @torch.no_grad()
    def ask_many(self, image, questions: Sequence[str], *, batch_size: int = 32, max_new_tokens: int = 16,
                 **options) -> list[str]:
        """Many questions about one image: its features are computed once and shared by every question."""
        picture = load_image(image)
        embeds = self.model.image_features(self.processor.pixel_values([picture]))
        answers: list[str] = []
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            inputs = pad_rows([self.processor.prompt(q) for q in chunk], self.processor.pad_id, side="left")
            out = self.model.generate(**inputs, image_embeds=embeds.expand(len(chunk), -1, -1),
                                      **self._options(max_new_tokens, options))
            answers += [self._decode(row) for row in out.tolist()]
        return answers

    def chat(self, image: str | Path | Image.Image, question: str, *, history: Sequence[tuple[str, str]] = (),
             stream: bool = False, max_new_tokens: int = 256, **options) -> str | Iterator[str]:
        """The answer to `question` about `image` (after the earlier turns in `history`); with stream=True an
        iterator of text pieces as they are generated."""
        if not question or not question.strip():
            raise InputError("the question is empty")
        picture = load_image(image)
        if history and "<image>" not in history[0][0]:
            history = [("<image>\n" + history[0][0], history[0][1])] + list(history[1:])
        inputs = pad_rows([self.processor.prompt(question, history)], self.processor.pad_id, side="left")
        pixels = self.processor.pixel_values([picture])
        options = self._options(max_new_tokens, options)
        if not stream:
            return self._decode(self.model.generate(**inputs, pixel_values=pixels, **options)[0].tolist())
        return self._stream(inputs, pixels, options)

    def _stream(self, inputs: dict, pixels: torch.Tensor, options: dict) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work():
            try:
                self.model.generate(**inputs, pixel_values=pixels, streamer=streamer, **options)
            except BaseException as error:  # surfaced in the caller's thread
                errors.append(error)
                streamer.end()

        thread = Thread(target=work, daemon=True)
        thread.start()
        first = True
        for piece in streamer:
            if first:
                piece, first = piece.lstrip(), not piece.strip()
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]
