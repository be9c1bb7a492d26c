"""Florence-VL as an lmms-eval model (EvolvingLMMs-Lab/lmms-eval's "simple" model API).

lmms-eval drives a model through `generate_until(requests)` and `loglikelihood(requests)`; each request is an
`Instance` whose `.args` are
    generate_until: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
    loglikelihood:  (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)
and `doc_to_visual(self.task_dict[task][split][doc_id])` gives the document's images (lmms-eval sets
`task_dict` on the model before it asks). With lmms-eval installed the class subclasses its `lmms` and
registers as "florence_vl"; without it (here: lmms-eval pulls a CUDA torch) it stands on a minimal base
with the same few members, so it imports, runs and is tested the same way.

Use it for real through lmms-eval's plugin mechanism (the package florence_vl.eval.lmms_plugin):

    LMMS_EVAL_PLUGINS=florence_vl.eval.lmms_plugin python -m lmms_eval --model florence_vl \\
        --model_args pretrained=DIR_OR_ID,batch_size=8 --tasks pope,textvqa_val --batch_size 8

- generate_until: the context is the question (the image marker goes first, as in training), the chat
  template is the checkpoint's; requests with equal generation settings are batched through
  `FlorenceVL.answer`, so answers equal it; the answer is cut at the first `until` string.
  gen_kwargs: max_new_tokens (default 128), temperature (0: greedy), top_p, num_beams, do_sample.
- loglikelihood: the sum of the log-probabilities of the continuation's tokens after the prompt (the
  context, asked in the chat template, the assistant's turn open), and whether greedy decoding would
  produce exactly those tokens. (lmms-eval's own llava adapter returns the mean loss instead; the API asks
  for the log-probability, which this returns.)
- Florence-VL sees one image: a document with several uses its first (warned once); none is an error.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError

log = logging.getLogger("florence_vl.lmms")

try:  # the real thing, where lmms-eval is installed
    from lmms_eval.api.model import lmms as LmmsBase
    from lmms_eval.api.registry import register_model

    HAVE_LMMS_EVAL = True
except ImportError:
    HAVE_LMMS_EVAL = False

    class LmmsBase:
        """The members of lmms_eval.api.model.lmms that lmms-eval's evaluator and this adapter use."""

        def __init__(self) -> None:
            self._rank = 0
            self._world_size = 1
            self.task_dict: dict = {}
            self.cache_hook = None

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

        def set_cache_hook(self, cache_hook) -> None:
            self.cache_hook = cache_hook

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            """"pretrained=DIR,batch_size=8" -> cls(pretrained="DIR", batch_size=8), as lmms-eval parses it."""
            args = {}
            for item in filter(None, (arg_string or "").split(",")):
                key, _, value = item.partition("=")
                args[key.strip()] = _parse_value(value.strip())
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            return cls(**args, **extra)

    def register_model(*names):
        return lambda cls: cls


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "do_sample")


@register_model("florence_vl")
class FlorenceVLLmms(LmmsBase):
    """lmms-eval model "florence_vl". `pretrained`: a Florence-VL checkpoint folder or hub id ("nano": the
    shipped one); `model`: an already loaded FlorenceVL (Python use and tests)."""

    def __init__(self, pretrained: str = "nano", batch_size: int | str = 1, max_new_tokens: int | str = 128,
                 dtype: str | None = None, template: str | None = None, device: str | None = None,
                 model=None, **unknown) -> None:
        if unknown:
            raise ValueError(f"florence_vl: unknown model_args {', '.join(sorted(unknown))}; known: pretrained, "
                             "batch_size, max_new_tokens, dtype, template, device")
        self.pretrained = str(pretrained)
        super().__init__()
        if model is None:
            from ..vl.chat import FlorenceVL

            model = FlorenceVL.from_pretrained(pretrained, dtype=dtype or "auto", template=template)
        if device not in (None, "", "cpu"):
            model.model.to(device)
        self.vl = model
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self._warned_images = False

    # -- documents -> images --------------------------------------------------------------------------

    def _image(self, doc_to_visual: Callable, doc_id, task: str, split: str):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        flat = [v for group in (visuals or []) for v in (group if isinstance(group, (list, tuple)) else [group])]
        images = [v for v in flat if v is not None]
        if not images:
            raise InputError(f"{task} document {doc_id} has no image; Florence-VL answers about an image")
        if any(isinstance(v, str) for v in images):
            raise InputError(f"{task} document {doc_id} gives a path or video ({images[0]!r}); Florence-VL takes "
                             "PIL images")
        if len(images) > 1 and not self._warned_images:
            log.warning("florence_vl: %s gives %d images per document; Florence-VL uses the first", task, len(images))
            self._warned_images = True
        return images[0]

    # -- generate_until --------------------------------------------------------------------------------

    def _generation(self, gen_kwargs: dict) -> tuple[int, dict, tuple[str, ...]]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = (until,) if isinstance(until, str) else tuple(until or ())
        max_new_tokens = int(kwargs.get("max_new_tokens") or self.max_new_tokens)
        options = {"num_beams": int(kwargs.get("num_beams") or 1)}
        temperature = float(kwargs.get("temperature") or 0)
        if temperature > 0 or kwargs.get("do_sample"):
            options.update(do_sample=True, temperature=temperature or 1.0)
            if kwargs.get("top_p") is not None:
                options["top_p"] = float(kwargs["top_p"])
        return max_new_tokens, options, tuple(s for s in until if s)

    def generate_until(self, requests: Sequence) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            settings = {k: v for k, v in (request.args[1] or {}).items() if k in GENERATION_KEYS}
            groups.setdefault(repr(sorted(settings.items())), []).append(i)
        bar = _progress(len(requests), self.rank == 0)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                args = [requests[i].args for i in chunk]
                max_new_tokens, options, _ = self._generation(args[0][1])
                images = [self._image(a[2], a[3], a[4], a[5]) for a in args]
                outs = self.vl.answer(images, [a[0] for a in args], batch_size=len(chunk),
                                      max_new_tokens=max_new_tokens, **options)
                for i, a, text in zip(chunk, args, outs):
                    answers[i] = _cut(text, self._generation(a[1])[2])
                    if self.cache_hook is not None:
                        self.cache_hook.add_partial("generate_until", (a[0], a[1]), answers[i])
                bar.update(len(chunk))
        bar.close()
        return answers

    def generate_until_multi_round(self, requests: Sequence) -> list[str]:
        raise NotImplementedError("florence_vl: multi-round generation is not implemented")

    # -- loglikelihood ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, context: str, continuation: str, image) -> tuple[float, bool]:
        vl = self.vl
        prompt = vl.processor.prompt(context)
        target = vl.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not target:
            return 0.0, True
        ids = torch.tensor([prompt + target], dtype=torch.long, device=vl.model.device)
        logits = vl.model(input_ids=ids, pixel_values=vl.processor.pixel_values([image])).logits[0]
        predicted = logits[-len(target) - 1:-1].float().log_softmax(-1)
        wanted = torch.tensor(target, device=predicted.device)
        logprob = predicted.gather(-1, wanted[:, None]).sum().item()
        return float(logprob), bool((predicted.argmax(-1) == wanted).all())

    def loglikelihood(self, requests: Sequence) -> list[tuple[float, bool]]:
        results = []
        bar = _progress(len(requests), self.rank == 0)
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args
            if callable(target):
                target = target(self.task_dict[task][split][doc_id])
            result = self._score(context, target, self._image(doc_to_visual, doc_id, task, split))
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood", (context, target), result)
            results.append(result)
            bar.update(1)
        bar.close()
        return results


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        text = text.split(stop)[0]
    return text


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="florence_vl", disable=not enabled or total < 2)
