"""Florence-VL for users: load a checkpoint, ask about an image, get the answer (whole or streamed).

    from florence_vl import FlorenceVL
    vl = FlorenceVL.from_pretrained("nano")                   # or a checkpoint directory / hub id
    vl.chat("scene.png", "How many shapes are there?")        # -> "3"
    for piece in vl.chat("scene.png", "Describe the image.", stream=True): print(piece, end="")
    vl.answer(["a.png", "b.png"], ["What color is the star?", "Is there a cross?"])   # batched

Image features are cached (`feature_cache`, an LRU of `feature_cache_size` images keyed by pixel content): a
second question about the same picture runs the LLM only. `chat` also keeps the LLM's KV cache of the prompt up to
and including the image (`prefix_cache`, `prefix_cache_size` entries): a second question then prefills only its
own tokens. Call `vl.clear_caches()` after changing weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from threading import Thread
from typing import Iterator, Sequence

import torch
from PIL import Image

from ..errors import InputError
from ..images import load_image
from .feature_cache import FeatureCache, image_key
from .model import IMAGE_TOKEN_INDEX, pad_rows
from .processor import VLProcessor


class FlorenceVL:
    def __init__(self, model, tokenizer, image_processor, template: str | None = None, source: str = "", *,
                 feature_cache_size: int = 32, prefix_cache_size: int = 4):
        self.model = model.eval()
        self.feature_cache = FeatureCache(feature_cache_size)
        self.prefix_cache = FeatureCache(prefix_cache_size)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        template = template or model.config.template
        max_length = getattr(model.llm.config, "max_position_embeddings", None)
        self.processor = VLProcessor(tokenizer, image_processor, template, model.config.image_aspect_ratio,
                                     max_length=max_length)

    @classmethod
    def from_pretrained(cls, source: str | Path = "nano", *, dtype: torch.dtype | str | None = "auto",
                        template: str | None = None, allow_pickle: bool = False,
                        feature_cache_size: int = 32, prefix_cache_size: int = 4) -> "FlorenceVL":
        """Our own checkpoint format or the published LLaVA layout; "nano" is the shipped Florence-VL-nano.

        dtype "auto" keeps a float32 checkpoint in float32 and computes a half-precision one in this CPU's fast
        dtype (bfloat16 with AMX-BF16, else float32 where that fits in free memory: florence_vl/compute_dtype.py);
        None keeps the checkpoint's dtype."""
        from ..compute_dtype import settle_auto_dtype
        from ..models import resolve_model
        from .checkpoint import load_florence_vl

        auto = isinstance(dtype, str) and dtype.lower() == "auto"
        bundle = load_florence_vl(resolve_model(source, "florence_vl"), dtype=None if auto else dtype,
                                  allow_pickle=allow_pickle)
        if auto:
            settle_auto_dtype(bundle.model)
        return cls(bundle.model, bundle.tokenizer, bundle.image_processor, template, source=str(source),
                   feature_cache_size=feature_cache_size, prefix_cache_size=prefix_cache_size)

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

    def pack_weights(self, force: bool = False) -> int:
        """Pre-pack the LLM's bf16 Linear weights for oneDNN (CPU inference only; florence_vl/packed_linear.py)
        where that pays (`packing_pays`: CPUs without AMX, where decoding then streams the weights once per token
        instead of re-packing them, ~1.8x faster at Phi-3.5-mini width); on AMX CPUs plain F.linear is faster and
        nothing is packed unless `force`. Returns how many layers were packed (docs/performance.md)."""
        from ..packed_linear import pack_linear_weights, packing_pays

        if not (force or packing_pays()):
            return 0
        self.prefix_cache.clear()
        return pack_linear_weights(self.model.llm)

    def clear_caches(self) -> None:
        """Forget cached image features and prompt prefixes (needed after the weights change)."""
        self.feature_cache.clear()
        self.prefix_cache.clear()

    def image_embeds(self, images: Sequence) -> torch.Tensor:
        """(images, tokens, llm_width): the fused features the LLM sees for each image, from the cache where
        the same picture was seen before; the others are computed as one batch and cached."""
        return self._image_embeds(images)[0]

    @torch.no_grad()
    def _image_embeds(self, images: Sequence) -> tuple[torch.Tensor, list[str]]:
        pictures = [load_image(im) for im in images]
        salt = f"{self.processor.image_aspect_ratio}|{self.model.vision_tower.num_image_tokens}"
        keys = [image_key(p, salt) for p in pictures]
        found = {k: self.feature_cache.get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            first = {k: pictures[keys.index(k)] for k in missing}
            fresh = self.model.image_features(self.processor.pixel_values(list(first.values())))
            for k, row in zip(missing, fresh):
                found[k] = row
                self.feature_cache.put(k, row)
        return torch.stack([found[k] for k in keys]), keys

    @torch.no_grad()
    def _prefix(self, ids: list[int], image: str, embeds: torch.Tensor):
        """A private copy of the LLM's KV cache for ids[: image marker + 1] (one row, no padding), computed once
        per (image, prefix) and kept in `prefix_cache`; None where it does not apply."""
        if not self.prefix_cache.max_items or IMAGE_TOKEN_INDEX not in ids:
            return None
        cut = ids.index(IMAGE_TOKEN_INDEX) + 1
        if cut >= len(ids):
            return None
        key = (image, tuple(ids[:cut]))
        cache = self.prefix_cache.get(key)
        if cache is None:
            inputs = self.model.splice(torch.tensor([ids[:cut]]), padding_side="left", image_embeds=embeds)
            cache = self.model.llm(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                                   position_ids=inputs["position_ids"], use_cache=True).past_key_values
            self.prefix_cache.put(key, cache)
        return copy.deepcopy(cache)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    def answer(self, images: Sequence, questions: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 64,
               **options) -> list[str]:
        """One answer per (image, question), `batch_size` at a time, greedy by default."""
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images but {len(questions)} questions")
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            embeds = self.image_embeds(images[start:start + batch_size])
            prompts = [self.processor.prompt(q) for q in questions[start:start + batch_size]]
            inputs = pad_rows(prompts, self.processor.pad_id, side="left")
            out = self.model.generate(**inputs, image_embeds=embeds, **self._options(max_new_tokens, options))
            answers += [self._decode(row) for row in out.tolist()]
        return answers

    @torch.no_grad()
    def ask_many(self, image, questions: Sequence[str], *, batch_size: int = 32, max_new_tokens: int = 16,
                 **options) -> list[str]:
        """Many questions about one image: its features are computed once and shared by every question."""
        embeds = self.image_embeds([image])
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
        if history and "<image>" not in history[0][0]:
            history = [("<image>\n" + history[0][0], history[0][1])] + list(history[1:])
        ids = self.processor.prompt(question, history)
        inputs = pad_rows([ids], self.processor.pad_id, side="left")
        embeds, keys = self._image_embeds([image])
        options = self._options(max_new_tokens, options)
        if options.get("num_beams", 1) == 1 and "past_key_values" not in options:
            past = self._prefix(ids, keys[0], embeds)
            if past is not None:
                options["past_key_values"] = past
        if not stream:
            return self._decode(self.model.generate(**inputs, image_embeds=embeds, **options)[0].tolist())
        return self._stream(inputs, embeds, options)

    def _stream(self, inputs: dict, embeds: torch.Tensor, options: dict) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def work():
            try:
                self.model.generate(**inputs, image_embeds=embeds, streamer=streamer, **options)
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
