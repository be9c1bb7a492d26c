"""Run Florence-2 tasks on many images at once: batched, masked, greedy or beam search, with box scores.

The encoder sees [<image> x N][<s> prompt </s>][<pad> ...]: image placeholders first (the native model
scatters the DaViT features into them), then the prompt, right-padded so that every real token keeps
the position it has when run alone, and the attention mask hides the padding from both the encoder's
self-attention and the decoder's cross-attention (the published remote code attended to it). Batched
results are therefore the one-at-a-time results; tests hold us to that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import (DynamicCache, EncoderDecoderCache, GenerationConfig, LogitsProcessor, LogitsProcessorList,
                          StoppingCriteriaList)

from ..errors import InputError
from ..images import load_image
from .geometry import num_image_tokens, processor_image_size
from .loop_stop import RunawayLoopStop, drop_loop
from .postprocess import DEFAULT_BOX_SCORE, check_box_score, decode_with_spans, parse_output
from .results import TaskResult
from .tasks import Task, build_prompt, get_task


class SuppressMask(LogitsProcessor):
    """`suppress_tokens` as one boolean mask made once: transformers' SuppressTokensLogitsProcessor rebuilds it on
    every step with torch.isin(arange(vocab), ids), which sorts when the list is long (tens of ms per step for the
    ~50k ids a small tokenizer leaves unused in a 51k embedding). Same scores (-inf at those ids)."""

    def __init__(self, ids: Sequence[int], vocab: int):
        self.mask = torch.zeros(vocab, dtype=torch.bool)
        self.mask[[i for i in ids if 0 <= i < vocab]] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = self.mask.to(scores.device)
        if mask.shape[0] != scores.shape[-1]:  # never for our models; keep transformers' semantics anyway
            mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), mask.nonzero().flatten())
        return scores.masked_fill(mask, -float("inf"))


@dataclass
class TaskRequest:
    """One task on one image. `region` is "x0,y0,x1,y1" or four numbers, in pixels of that image."""

    image: str | Path | Image.Image
    task: str
    text: str | None = None
    region: str | Sequence[float] | None = None


def encoder_rows(image_token_id: int, num_image_tokens: int, prompts_ids: Sequence[list[int]],
                 pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[<image> x N][<s> prompt </s>], right-padded: (input_ids, attention_mask) for training and inference."""
    rows = [[image_token_id] * num_image_tokens + list(ids) for ids in prompts_ids]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return input_ids, attention_mask


class BeamSharedCrossCache(EncoderDecoderCache):
    """transformers' encoder-decoder cache, minus one copy per beam-search step: beam search re-selects rows only
    among the beams of one request, and those beams hold the same cross-attention keys and values (the encoder
    output repeated num_beams times), so re-ordering the cross-attention part changes nothing. transformers copies
    it anyway (index_select) at every step: 2 x layers x rows x source tokens x d floats, ~1 GB per step for 48
    rows at Florence-2-base's 590 source tokens, freshly allocated and page-faulted each time."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


@dataclass
class _Prepared:
    index: int
    image: Image.Image
    source: str | None
    task: Task
    prompt: str
    prompt_ids: list[int]


class Florence2:
    """A Florence-2 model with its tokenizer and image processor, ready to run tasks.

    >>> florence = Florence2.from_pretrained("path/or/hub-id")
    >>> [result] = florence.run(["cat.png"], "<OD>")
    >>> result.output["bboxes"], result.output["labels"], result.output["scores"]
    """

    def __init__(self, model, tokenizer, image_processor, source: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = source
        self.image_size = processor_image_size(image_processor)
        self.num_image_tokens = num_image_tokens(model.config.vision_config, self.image_size)
        self.image_token_id = model.config.image_token_id
        self.vision_batch_size = 1  # images per DaViT call inside a batch: 1 measured fastest (docs/performance.md)
        text_config = model.config.text_config
        self.max_source_tokens = text_config.max_position_embeddings
        # Never generate the image placeholder nor the rows that only pad the embedding matrix.
        vocab = self._vocab_size = model.get_output_embeddings().weight.shape[0]
        self._suppress = [self.image_token_id] + list(range(len(tokenizer), vocab))
        self._suppress_masks: dict[tuple, SuppressMask] = {}
        # transformers fills unset generation options from model.generation_config, so a checkpoint's
        # settings (the published ones carry no_repeat_ngram_size=3) would silently change our decoding.
        # The runner owns the defaults; the checkpoint's stay available here.
        self.checkpoint_generation_config = model.generation_config
        model.generation_config = GenerationConfig(
            decoder_start_token_id=text_config.decoder_start_token_id, bos_token_id=text_config.bos_token_id,
            eos_token_id=text_config.eos_token_id, pad_token_id=text_config.pad_token_id)

    @classmethod
    def from_pretrained(cls, source: str | Path, *, dtype: torch.dtype | str | None = "auto",
                        allow_pickle: bool = False) -> "Florence2":
        """Load "nano" (the shipped Florence-2-nano), a local directory or a hub id, in the native or the
        original published layout.

        dtype "auto" keeps a float32 checkpoint in float32 and computes a half-precision one in this CPU's fast
        dtype: bfloat16 with AMX-BF16, else float32 where that fits in free memory (florence_vl/compute_dtype.py).
        """
        from ..compute_dtype import settle_auto_dtype
        from ..models import resolve_model
        from .checkpoint import load_florence2

        source = resolve_model(source, "florence2")
        bundle = load_florence2(source, dtype=None if dtype == "auto" else dtype, allow_pickle=allow_pickle)
        model = settle_auto_dtype(bundle.model) if dtype == "auto" else bundle.model
        return cls(model, bundle.tokenizer, bundle.image_processor, source=str(source))

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # -- public API -------------------------------------------------------------------------------

    def run(self, images: Iterable[str | Path | Image.Image], task: str, text: str | None = None,
            region: str | Sequence[float] | None = None, **options) -> list[TaskResult]:
        """The same task on every image. Options: see `run_requests`."""
        return self.run_requests([TaskRequest(image, task, text, region) for image in images], **options)

    def run_requests(self, requests: Sequence[TaskRequest], *, batch_size: int = 8, num_beams: int = 3,
                     max_new_tokens: int = 1024, with_scores: bool = True, progress: bool = False,
                     vision_batch_size: int | None = None, stop_loops: bool = True,
                     box_score: str = DEFAULT_BOX_SCORE, **generation_kwargs) -> list[TaskResult]:
        """Run many (image, task, input) requests, `batch_size` at a time; results keep the request order.

        num_beams=1 is greedy search. Requests are grouped by prompt length to waste little on padding.
        stop_loops ends a row that has fallen into a runaway loop (the same 1-8 tokens again and again,
        florence_vl/florence2/loop_stop.py) and keeps one copy of the loop; `result.extra["loop_tokens_dropped"]`
        says how many tokens went. box_score says how a box's or polygon's score is made from its tokens'
        probabilities: "label_x_loc" (P(label) x P(locations), default), "loc" or "label" (postprocess.py).
        Other generation options (no_repeat_ngram_size=3, ...) pass to transformers.
        The vision tower runs `vision_batch_size` images at a time (default `self.vision_batch_size`) while the
        text encoder and the decoder run the whole batch: DaViT is compute-bound and only gets slower per image
        in big batches (its activations leave the caches), the decoder is memory-bound and gains from them.
        """
        if batch_size < 1:
            raise InputError("batch size must be at least 1")
        check_box_score(box_score)
        tasks = [get_task(r.task) for r in requests]  # fail fast on an unknown task
        order = sorted(range(len(requests)), key=lambda i: (len(tasks[i].prompt), i))
        results: list[TaskResult | None] = [None] * len(requests)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        bar = tqdm(total=len(requests), desc="florence-2", unit="img", disable=not progress)
        for batch in batches:
            prepared = [self._prepare(i, requests[i]) for i in batch]
            for item, result in zip(prepared, self._generate(prepared, num_beams, max_new_tokens, with_scores,
                                                             generation_kwargs, vision_batch_size, stop_loops,
                                                             box_score)):
                results[item.index] = result
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def check_request(self, request: TaskRequest) -> str:
        """The prompt `request` would run with, or the InputError `run_requests` would raise for it (unknown
        task, missing or extra input, unreadable image, prompt longer than the model reads). Generates nothing."""
        return self._prepare(0, request).prompt

    # -- internals --------------------------------------------------------------------------------

    def _prepare(self, index: int, request: TaskRequest) -> _Prepared:
        image = load_image(request.image)
        task = get_task(request.task)
        prompt = build_prompt(task, request.text, request.region, image.size)
        prompt_ids = self.tokenizer(prompt)["input_ids"]  # <s> prompt </s>
        total = self.num_image_tokens + len(prompt_ids)
        if total > self.max_source_tokens:
            raise InputError(f"prompt too long: {len(prompt_ids)} tokens; this model reads at most "
                             f"{self.max_source_tokens - self.num_image_tokens} prompt tokens")
        source = None if isinstance(request.image, Image.Image) else str(request.image)
        return _Prepared(index, image, source, task, prompt, prompt_ids)

    def encode(self, prepared: Sequence[_Prepared]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch: image placeholders + prompt, right-padded, with the attention mask."""
        pixel_values = self.image_processor([p.image for p in prepared], return_tensors="pt")["pixel_values"]
        input_ids, attention_mask = encoder_rows(self.image_token_id, self.num_image_tokens,
                                                 [p.prompt_ids for p in prepared], self.tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "pixel_values": pixel_values.to(self.model.device, self.dtype)}

    def generation_config(self, num_beams: int, max_new_tokens: int, **overrides) -> GenerationConfig:
        text = self.model.config.text_config
        # The decoder's learned positions end at max_position_embeddings: never generate past them.
        max_new_tokens = min(max_new_tokens, text.max_position_embeddings)
        options = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                       early_stopping=num_beams > 1, decoder_start_token_id=text.decoder_start_token_id,
                       bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                       pad_token_id=text.pad_token_id, suppress_tokens=self._suppress)
        options.update(overrides)
        return GenerationConfig(**options)

    def _suppress_mask(self, ids: Sequence[int]) -> SuppressMask:
        key = tuple(ids)
        cache = self._suppress_masks
        if key not in cache:
            if len(cache) >= 4:
                cache.clear()
            cache[key] = SuppressMask(key, self._vocab_size)
        return cache[key]

    def image_features(self, pixel_values: torch.Tensor, vision_batch_size: int | None = None) -> torch.Tensor:
        """(images, num_image_tokens, d): DaViT + projector, `vision_batch_size` images at a time."""
        step = max(1, vision_batch_size or self.vision_batch_size)
        get = self.model.model.get_image_features
        parts = [get(pixel_values[i:i + step]).pooler_output for i in range(0, pixel_values.shape[0], step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def encoder_outputs(self, inputs: dict, vision_batch_size: int | None = None):
        """The text encoder's output for a batch from `encode`: what generate's first step computes, with the
        image features spliced at the <image> placeholders exactly as the native model does."""
        features = self.image_features(inputs["pixel_values"], vision_batch_size)
        embeds = self.model.get_input_embeddings()(inputs["input_ids"])
        placeholders = (inputs["input_ids"] == self.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(placeholders, features.to(embeds.dtype))
        return self.model.model.language_model.encoder(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])

    @torch.inference_mode()
    def _generate(self, prepared: Sequence[_Prepared], num_beams: int, max_new_tokens: int, with_scores: bool,
                  generation_kwargs: dict, vision_batch_size: int | None = None,
                  stop_loops: bool = True, box_score: str = DEFAULT_BOX_SCORE) -> list[TaskResult]:
        inputs = {k: v.to(self.model.device) for k, v in self.encode(prepared).items()}
        config = self.generation_config(num_beams, max_new_tokens, output_scores=with_scores,
                                        return_dict_in_generate=True, **generation_kwargs)
        extra = {}
        if config.suppress_tokens:
            extra["logits_processor"] = LogitsProcessorList([self._suppress_mask(config.suppress_tokens)])
            config.suppress_tokens = None
        if config.num_beams > 1 and "past_key_values" not in generation_kwargs:
            extra["past_key_values"] = BeamSharedCrossCache(DynamicCache(), DynamicCache())
        if stop_loops:
            extra["stopping_criteria"] = StoppingCriteriaList([RunawayLoopStop(prompt_length=1)])
        out = self.model.generate(encoder_outputs=self.encoder_outputs(inputs, vision_batch_size),
                                  attention_mask=inputs["attention_mask"], generation_config=config, **extra)
        sequences = out.sequences[:, 1:]  # drop the decoder start token
        logprobs = None
        if with_scores:
            logprobs = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None) if num_beams > 1 else None,
                normalize_logits=num_beams == 1).float()
        text_config = self.model.config.text_config
        results = []
        for row, item in enumerate(prepared):
            ids = sequences[row].tolist()
            # A row ends at </s>, or where a loop stop ended it early (pads follow while the batch goes on).
            ends = [ids.index(t, 1) for t in (text_config.eos_token_id, text_config.pad_token_id) if t in ids[1:]]
            ids = ids[:min(ends, default=len(ids))]
            dropped = 0
            if stop_loops:
                ids, dropped = drop_loop(ids)
            scores = None if logprobs is None else logprobs[row, :len(ids)].tolist()
            decoded = decode_with_spans(self.tokenizer, ids, scores)
            output = parse_output(item.task, decoded, item.image.size, box_score=box_score)
            results.append(TaskResult(task=item.task.token, output=output, text=decoded.text,
                                      image_size=item.image.size, image=item.source, prompt=item.prompt,
                                      extra={"loop_tokens_dropped": dropped} if dropped else {}))
        return results
