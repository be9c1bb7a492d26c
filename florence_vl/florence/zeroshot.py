"""Zero-shot classification and image-text retrieval with a UniCL model, on fixed splits of the nano world.

Classification: each class's text embedding is the normalised mean of its prompts' embeddings (prompt
ensembling, as CLIP and Florence do); an image goes to the class of highest cosine similarity.
- 64-way color-shape: the classes are CLASS_NAMES ("red circle", ...).
- 8-way shape: the 64 color-shape scores are pooled per shape (log-sum-exp over colors, at the model's
  temperature), i.e. the shape the model finds most likely whatever the color. The model never sees
  color-less prompts in training, so this is its natural shape read-out.
On "test-novel" the same numbers are also given for the objects whose color-shape pair never occurs in
training (the `novel_*` keys): compositional generalisation.
Retrieval: whole scenes against one caption each; a hit is a retrieved caption (or image) whose caption
text equals the query's own, so two scenes with identical captions do not count against the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..data.vocabulary import COLORS, NOVEL_PAIRS, SHAPES
from ..data.world import SPLIT_SIZES, iter_scenes
from ..florence2.geometry import image_processor
from .data import CLASS_NAMES, TEMPLATES, crop_object, fill, usable_objects
from .model import UniCL, tokenize


def _device(model: UniCL) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: UniCL, images, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised embeddings of PIL images (pre-processed at the model's size) or of a pixel tensor."""
    processor = None if isinstance(images, torch.Tensor) else image_processor(model.config.image_size)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if processor is not None:
            chunk = processor(list(chunk), return_tensors="pt")["pixel_values"]
        out.append(model.encode_image(chunk.to(_device(model))).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model: UniCL, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, list(texts[start:start + batch_size]), model.config.max_len)
        device = _device(model)
        out.append(model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def class_embeddings(model: UniCL, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """(n_classes, d): the normalised mean of each class's normalised prompt embeddings."""
    texts = [fill(t, name) for name in class_names for t in templates]
    emb = encode_texts(model, tokenizer, texts).view(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zero_shot_scores(model: UniCL, tokenizer, images, class_names: Sequence[str],
                     templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """(n_images, n_classes) cosine similarities."""
    model.eval()
    return encode_images(model, images) @ class_embeddings(model, tokenizer, class_names, templates).t()


def zero_shot_classify(model: UniCL, tokenizer, images, class_names: Sequence[str],
                       templates: Sequence[str] = TEMPLATES) -> list[int]:
    """Index into class_names of each image's predicted class (prompt-ensemble zero-shot)."""
    return zero_shot_scores(model, tokenizer, images, class_names, templates).argmax(dim=1).tolist()


def recall_at(similarity: torch.Tensor, hit: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """similarity (queries, candidates); hit[q, c] True where candidate c answers query q."""
    ranked = similarity.argsort(dim=1, descending=True)
    hits = torch.gather(hit, 1, ranked)
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def object_crops(scenes) -> tuple[list[Image.Image], list[str], list[str]]:
    """Crops, colors and shapes of the usable objects of the scenes (shapes and mixed scenes hold objects)."""
    crops, colors, shapes = [], [], []
    for scene in scenes:
        for obj in usable_objects(scene.record):
            crops.append(crop_object(scene.image, obj["bbox"]))
            colors.append(obj["color"])
            shapes.append(obj["class"])
    return crops, colors, shapes


@torch.no_grad()
def evaluate_zero_shot(model: UniCL, tokenizer, split: str = "test", n: int = 200, caption_level: str = "detailed",
                       templates: Sequence[str] = TEMPLATES) -> dict:
    """Zero-shot accuracy on the object crops of the first n scenes of `split`, retrieval recall@1/5 on those scenes."""
    if split == "train" or split not in SPLIT_SIZES:
        raise ValueError(f"evaluate on a fixed split ({', '.join(SPLIT_SIZES)}), not {split!r}")
    n = min(n, SPLIT_SIZES[split])
    model.eval()
    scenes = list(iter_scenes(split, n=n))
    crops, colors, shapes = object_crops(scenes)
    result = {"split": split, "scenes": n, "crops": len(crops)}
    if crops:
        result.update(_classification(model, tokenizer, crops, colors, shapes, templates))
    images, captions = [s.image for s in scenes], [s.record["captions"][caption_level] for s in scenes]
    similarity = encode_images(model, images) @ encode_texts(model, tokenizer, captions).t()   # (images, texts)
    same = torch.tensor([[a == b for b in captions] for a in captions])
    i2t, t2i = recall_at(similarity, same), recall_at(similarity.t(), same)
    result.update({"retrieval_scenes": len(images), "caption_level": caption_level,
                   "i2t_r1": i2t[1], "i2t_r5": i2t[5], "t2i_r1": t2i[1], "t2i_r5": t2i[5]})
    return result


def _classification(model: UniCL, tokenizer, crops, colors, shapes, templates) -> dict:
    """64-way color-shape and 8-way shape accuracy (and the same on novel color-shape pairs, where there are any)."""
    scores = zero_shot_scores(model, tokenizer, crops, CLASS_NAMES, templates)            # (N, 64)
    true_class = torch.tensor([CLASS_NAMES.index(f"{c} {s}") for c, s in zip(colors, shapes)])
    true_shape = torch.tensor([SHAPES.index(s) for s in shapes])
    pred_class = scores.argmax(dim=1)
    logits = model.scale().detach().float().cpu() * scores
    per_shape = logits.view(len(crops), len(COLORS), len(SHAPES)).logsumexp(dim=1)   # pooled over colors
    pred_shape = per_shape.argmax(dim=1)
    correct_class, correct_shape = pred_class == true_class, pred_shape == true_shape
    result = {"color_shape_acc": correct_class.float().mean().item(), "shape_acc": correct_shape.float().mean().item()}
    novel = torch.tensor([(c, s) in NOVEL_PAIRS for c, s in zip(colors, shapes)])
    if novel.any():
        result.update(novel_crops=int(novel.sum()),
                      novel_color_shape_acc=correct_class[novel].float().mean().item(),
                      novel_shape_acc=correct_shape[novel].float().mean().item())
    return result
