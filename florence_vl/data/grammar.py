"""The grammar of the nano world: the text derived from a record.

Three caption levels, grounding phrases, unique referring expressions (and `resolve_expression`, which
reads them back), and typed questions with answers (QA_TYPES), POPE-style existence questions included.
`describe(record, rng)` writes all of it into a record whose objects, texts and bars are drawn.
"""

from __future__ import annotations

import random
import re

from .spatial import box_center, position_is_clear, position_of, reading_order_key, relation
from .vocabulary import BG_STYLES, COLOR_WEIGHTS, COLORS, NOVEL_PAIRS, RELATIONS, SHAPE_WEIGHTS, SHAPES, SIZES, \
    lexicon, random_word

QA_TYPES = ("count", "color", "shape", "exist", "spatial", "read", "chart_value", "chart_max", "chart_min",
            "chart_compare", "multiple_choice")
_POS_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}
_NUMBERS = "zero one two three four five six seven eight nine ten".split()


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def _count_word(n: int) -> str:
    return _NUMBERS[n] if n < len(_NUMBERS) else str(n)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def exist_question(color: str, shape: str) -> str:
    """The world's existence question about a colour-shape pair (POPE's form)."""
    return f"Is there {_article(f'{color} {shape}')} in the image?"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# ------------------------------------------------------------------------------ referring expressions
_BASE = rf"the (?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)}|shape)"
_EXPR_RE = re.compile(rf"^{_BASE}(?: (on the left|on the right|at the top|at the bottom)"
                      rf"| ({'|'.join(RELATIONS)}) ({_BASE}))?$")


def _extremal(cands: list[dict], where: str, size) -> list[dict]:
    axis = 0 if where in ("left", "right") else 1
    sign = 1 if where in ("left", "top") else -1
    values = [sign * box_center(c["bbox"])[axis] for c in cands]
    margin = 0.08 * size[axis]
    return [c for c, v in zip(cands, values) if v <= min(values) + margin]


def resolve_expression(expression: str, record: dict) -> list[int]:
    """The ids of the record's objects a referring expression fits (the grammar of `referring_expression`)."""
    m = _EXPR_RE.match(expression)
    if not m:
        return []
    size, color, noun, where, rel = m.group(1), m.group(2), m.group(3), m.group(4), m.group(5)
    objects = record["objects"]
    cands = [o for o in objects if (size is None or o["size"] == size) and (color is None or o["color"] == color)
             and (noun == "shape" or o["class"] == noun)]
    if where:
        cands = _extremal(cands, where.split()[-1], record["size"]) if cands else []
    elif rel:
        landmark = resolve_expression(m.group(6), record)
        if len(landmark) != 1:
            return []
        ref = objects[landmark[0]]
        cands = [o for o in cands if o is not ref and relation(o["bbox"], ref["bbox"]) == rel]
    return [o["id"] for o in cands]


def referring_expression(obj: dict, record: dict, color: bool = True, shape: bool = True,
                         relations: bool = True) -> str | None:
    """The simplest expression of the grammar that fits `obj` and no other object, or None."""
    combos = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")] if shape else \
        [(), ("color",), ("size",), ("size", "color")]
    combos = [c for c in combos if color or "color" not in c]

    def base(c):
        words = [obj["size"]] if "size" in c else []
        words += [obj["color"]] if "color" in c else []
        return "the " + " ".join(words + [obj["class"] if "shape" in c else "shape"])

    def fits(expr):
        return resolve_expression(expr, record) == [obj["id"]]

    for c in combos:
        if fits(base(c)):
            return base(c)
    for c in combos:
        for where in ("left", "right", "top", "bottom"):
            if fits(f"{base(c)} {_POS_PHRASE[where]}"):
                return f"{base(c)} {_POS_PHRASE[where]}"
    if relations:
        gap = 0.05 * min(record["size"])
        for c in combos:
            for other in record["objects"]:
                rel = relation(obj["bbox"], other["bbox"], gap, clear=True) if other is not obj else None
                landmark = referring_expression(other, record, relations=False) if rel else None
                if landmark and " on the " not in landmark and " at the " not in landmark:
                    expr = f"{base(c)} {rel} {landmark}"
                    if fits(expr):
                        return expr
    return None



# --------------------------------------------------------------------------- captions and questions
class _Text:
    """A sentence built piece by piece, remembering where each grounded phrase sits."""

    def __init__(self):
        self.text, self.phrases = "", []

    def add(self, piece: str, boxes: list | None = None) -> "_Text":
        if boxes is not None:
            self.phrases.append({"phrase": piece, "span": [len(self.text), len(self.text) + len(piece)],
                                 "boxes": boxes})
        self.text += piece
        return self

    def add_list(self, items: list[tuple[str, str, list | None]]) -> "_Text":
        """items: (grounded head, rest, boxes); joined as "a, b and c"."""
        for i, (head, rest, boxes) in enumerate(items):
            if i:
                self.add(" and " if i == len(items) - 1 else ", ")
            self.add(head, boxes).add(rest)
        return self


def _groups(objects: list[dict]) -> list[tuple[tuple, list[dict]]]:
    groups: dict[tuple, list[dict]] = {}
    for o in sorted(objects, key=lambda o: reading_order_key(o["bbox"])):
        groups.setdefault((o["size"], o["color"], o["class"]), []).append(o)
    return list(groups.items())


def _group_phrase(key: tuple, members: list[dict]) -> str:
    size, color, shape = key
    if len(members) == 1:
        return _article(f"{size} {color} {shape}")
    return f"{_count_word(len(members))} {size} {color} {plural(shape)}"


def _is_simple(expression: str) -> bool:
    return not any(w in expression for w in (" on the ", " at the ", " of the ", " above ", " below "))


def _sign_ref(sign: dict, signs: list[dict], size) -> str | None:
    if len(signs) == 1:
        return "the sign"
    if sum(t["plate"]["color"] == sign["plate"]["color"] for t in signs) == 1:
        return f"the {sign['plate']['color']} sign"
    for where in ("left", "right", "top", "bottom"):
        if _extremal(signs, where, size) == [sign]:
            return f"the sign {_POS_PHRASE[where]}"
    return None


def _captions(record: dict) -> tuple[dict, dict]:
    objects, bars, size = record["objects"], record["bars"], record["size"]
    signs = [t for t in record["texts"] if t["role"] == "sign"]
    bg = record["background"]
    where = f"on a {BG_STYLES[bg['style']]} {bg['name']} background"
    n = len(objects)
    if record["kind"] == "chart":
        labels = [b["label"] for b in bars]
        colors = {b["color"] for b in bars}
        colored = f"{bars[0]['color']} bars" if len(colors) == 1 else "bars in different colors"
        brief = f"A bar chart with {_count_word(len(bars))} bars."
        detailed = f"The image shows a bar chart with {_count_word(len(bars))} {colored} labelled {_join(labels)}."
        values = sorted(b["value"] for b in bars)
        pairs = [f"{b['label']} {b['value']}" for b in bars]
        more = (f"The image shows a bar chart with {_count_word(len(bars))} {colored} {where}. The bars are "
                f"labelled {_join(labels)}. Their values are {_join(pairs)}.")
        top = [b for b in bars if b["value"] == values[-1]]
        low = [b for b in bars if b["value"] == values[0]]
        if len(top) == 1:
            more += f" The highest bar is {top[0]['label']}."
        if len(low) == 1:
            more += f" The lowest bar is {low[0]['label']}."
        more += f" The value axis goes from 0 to 100 in steps of {record['chart']['ticks'][1]}."
        return {"brief": brief, "detailed": detailed, "more_detailed": more}, {"caption": detailed, "phrases": []}

    items = [(_group_phrase(k, m), "", [o["bbox"] for o in m]) for k, m in _groups(objects)]
    items += [(_article(f"{t['plate']['color']} sign"), f' that says "{t["text"]}"', [t["plate"]["bbox"]])
              for t in signs]
    sentence = _Text().add("The image shows ").add_list(items).add(f" {where}.")
    shapes_short = (_join([_article(f"{o['color']} {o['class']}") for o in
                           sorted(objects, key=lambda o: reading_order_key(o["bbox"]))])
                    if 0 < n <= 2 else f"{_count_word(n)} shapes")
    signs_short = "" if not signs else (
        f'a {signs[0]["plate"]["color"]} sign that says "{signs[0]["text"]}"' if len(signs) == 1
        else f"{_count_word(len(signs))} signs that say {_join([_quoted(t) for t in signs])}")
    if not signs:
        brief = f"{_cap(shapes_short)} on a {bg['name']} background."
    elif not objects:
        brief = _cap(signs_short) + "."
    else:
        brief = f"{_cap(shapes_short)} and {signs_short}."
    more = [sentence.text]
    if objects:
        more.append(f"There {'is' if n == 1 else 'are'} {_count_word(n)} shape{'s' if n != 1 else ''} in total.")
    for o in sorted(objects, key=lambda o: reading_order_key(o["bbox"])):
        ref = o["referring"]
        text = f"{_cap(ref)} is {_POS_PHRASE[o['position']]}." if _is_simple(ref) else ""
        if o["covered_by"]:
            cover = objects[o["covered_by"][0]]
            text += (" It" if text else _cap(ref)) + f" is partly covered by {cover['referring']}."
        if text:
            more.append(text.strip())
    for t in signs:
        tilt = "level" if abs(t["angle"]) < 3 else "tilted"
        pos = _POS_PHRASE[position_of(t["bbox"], size)]
        more.append(f'The {t["plate"]["color"]} sign that says "{t["text"]}" is {pos} and is {tilt}.')
    captions = {"brief": brief, "detailed": sentence.text, "more_detailed": " ".join(more)}
    return captions, {"caption": sentence.text, "phrases": sentence.phrases}


def _quoted(t: dict) -> str:
    return f'"{t["text"]}"'


def _qa(q: str, a: str, kind: str, **extra) -> dict:
    return {"question": q, "answer": a, "type": kind, **extra}


def _multiple_choice(rng, question: str, answer: str, pool: list[str], subtype: str) -> dict:
    distractors = rng.sample([p for p in dict.fromkeys(pool) if p != answer], 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    letter = "ABCD"[choices.index(answer)]
    text = question + "".join(f"\n{letter_}. {c}" for letter_, c in zip("ABCD", choices))
    return _qa(text, letter, "multiple_choice", choices=choices, answer_text=answer, subtype=subtype)


def _pair_universe(split: str) -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES if split == "test-novel" or (c, s) not in NOVEL_PAIRS]


def _object_questions(rng, record: dict) -> list[dict]:
    objects, size, split = record["objects"], record["size"], record["split"]
    qa = [_qa("How many shapes are there?", str(len(objects)), "count")]
    present_classes = sorted({o["class"] for o in objects}, key=SHAPES.index)
    cls = rng.choice(present_classes)
    qa.append(_qa(f"How many {plural(cls)} are there?", str(sum(o["class"] == cls for o in objects)), "count"))
    color = rng.choice(sorted({o["color"] for o in objects}, key=list(COLORS).index))
    qa.append(_qa(f"How many {color} shapes are there?", str(sum(o["color"] == color for o in objects)), "count"))
    absent = [s for s in SHAPES if s not in present_classes]
    if absent and rng.random() < 0.5:
        qa.append(_qa(f"How many {plural(rng.choice(absent))} are there?", "0", "count"))
    for o in rng.sample(objects, min(2, len(objects))):
        ref = referring_expression(o, record, color=False)
        if ref:
            qa.append(_qa(f"What color is {ref}?", o["color"], "color"))
    for o in rng.sample(objects, min(2, len(objects))):
        ref = referring_expression(o, record, shape=False)
        if ref:
            qa.append(_qa(f"What shape is {ref}?", o["class"], "shape"))
    # POPE-style existence: k positives shared by the three settings, k negatives per setting
    present = {(o["color"], o["class"]) for o in objects}
    universe = _pair_universe(split)
    positives = rng.sample(sorted(present), min(3, len(present)))
    absent_pairs = [p for p in universe if p not in present]
    k = len(positives)
    by_question: dict[str, dict] = {}

    def exist(pair, answer, setting):
        q = exist_question(*pair)
        item = by_question.setdefault(q, _qa(q, answer, "exist", pope=[]))
        if setting not in item["pope"]:
            item["pope"].append(setting)

    for pair in positives:
        for setting in ("random", "popular", "adversarial"):
            exist(pair, "yes", setting)
    for pair in rng.sample(absent_pairs, k):
        exist(pair, "no", "random")
    popular = sorted(absent_pairs, key=lambda p: -COLOR_WEIGHTS[p[0]] * SHAPE_WEIGHTS[p[1]])
    for pair in popular[:k]:
        exist(pair, "no", "popular")
    shared = [p for p in absent_pairs if any(p[0] == c or p[1] == s for c, s in present)]
    rng.shuffle(shared)
    shared.sort(key=lambda p: -sum(p[0] == o["color"] or p[1] == o["class"] for o in objects))
    others = [p for p in rng.sample(absent_pairs, len(absent_pairs)) if p not in shared]
    adversarial = (shared + others)[:k]
    for pair in adversarial:
        exist(pair, "no", "adversarial")
    qa.extend(by_question.values())
    # spatial relations between objects that have simple names
    simple = [o for o in objects if _is_simple(o["referring"])]
    gap = 0.05 * min(size)
    pairs = [(a, b, relation(a["bbox"], b["bbox"], gap, clear=True)) for a in simple for b in simple if a is not b]
    pairs = [p for p in pairs if p[2]]
    for a, b, rel in rng.sample(pairs, min(2, len(pairs))):
        if rng.random() < 0.5:
            qa.append(_qa(f"Is {a['referring']} {rel} {b['referring']}?", "yes", "spatial"))
        else:
            qa.append(_qa(f"Is {a['referring']} {_OPPOSITE[rel]} {b['referring']}?", "no", "spatial"))
    clear = [o for o in simple if position_is_clear(o["bbox"], size)]
    if clear:
        o = rng.choice(clear)
        qa.append(_qa(f"Where in the image is {o['referring']}?", o["position"], "spatial"))
    # multiple choice
    o = rng.choice(objects)
    if rng.random() < 0.5 and (ref := referring_expression(o, record, color=False)):
        qa.append(_multiple_choice(rng, f"What color is {ref}?", o["color"], list(COLORS), "color"))
    elif ref := referring_expression(o, record, shape=False):
        qa.append(_multiple_choice(rng, f"What shape is {ref}?", o["class"], list(SHAPES), "shape"))
    return qa


def _text_questions(rng, record: dict) -> list[dict]:
    signs = [t for t in record["texts"] if t["role"] == "sign"]
    size = record["size"]
    qa = [_qa("How many signs are there?", str(len(signs)), "count")]
    if len(signs) == 1:
        qa.append(_qa("What is written in the image?", signs[0]["text"], "read"))
    refs = [(t, _sign_ref(t, signs, size)) for t in signs]
    for t, ref in refs:
        if ref:
            qa.append(_qa(f"What does {ref} say?", t["text"], "read"))
    t = rng.choice(signs)
    if sum(s["text"] == t["text"] for s in signs) == 1:
        qa.append(_qa(f'What color is the sign that says "{t["text"]}"?', t["plate"]["color"], "color"))
    words = {w for s in signs for w in s["text"].split()}
    qa.append(_qa(f'Is the word "{rng.choice(sorted(words))}" written in the image?', "yes", "exist"))
    absent = rng.choice([w for w in lexicon() if w not in words])
    qa.append(_qa(f'Is the word "{absent}" written in the image?', "no", "exist"))
    named = [(t, ref) for t, ref in refs if ref]
    if named:
        t, ref = rng.choice(named)
        pool = [s["text"] for s in signs] + [" ".join(random_word(rng) for _ in t["text"].split()) for _ in range(4)]
        while len({p for p in pool if p != t["text"]}) < 3:  # rare: the random words repeated each other or the answer
            pool.append(" ".join(random_word(rng) for _ in t["text"].split()))
        qa.append(_multiple_choice(rng, f"What does {ref} say?", t["text"], pool, "read"))
    if not record["objects"]:
        pair = rng.choice(_pair_universe(record["split"]))
        qa.append(_qa(exist_question(*pair), "no", "exist", pope=[]))
    return qa


def _chart_questions(rng, record: dict) -> list[dict]:
    bars = record["bars"]
    values = [b["value"] for b in bars]
    qa = [_qa("How many bars are there?", str(len(bars)), "count")]
    for b in rng.sample(bars, min(3, len(bars))):
        qa.append(_qa(f"What is the value of the {b['label']} bar?", str(b["value"]), "chart_value"))
    hi, lo = max(values), min(values)
    labels = [b["label"] for b in bars]
    pool = labels + rng.sample([w for w in lexicon() if w not in labels], 3)
    if values.count(hi) == 1:
        top = bars[values.index(hi)]["label"]
        qa.append(_qa("Which bar has the highest value?", top, "chart_max"))
        qa.append(_multiple_choice(rng, "Which bar has the highest value?", top, pool, "chart_max"))
    if values.count(lo) == 1:
        qa.append(_qa("Which bar has the lowest value?", bars[values.index(lo)]["label"], "chart_min"))
    pairs = [(a, b) for a in bars for b in bars if a["value"] != b["value"] and a is not b]
    if pairs:
        a, b = rng.choice(pairs)
        qa.append(_qa(f"Is the {a['label']} bar higher than the {b['label']} bar?",
                      "yes" if a["value"] > b["value"] else "no", "chart_compare"))
        a, b = rng.choice(pairs)
        qa.append(_qa(f"Which bar is higher, {a['label']} or {b['label']}?",
                      a["label"] if a["value"] > b["value"] else b["label"], "chart_compare"))
    b = rng.choice(bars)
    qa.append(_qa(f"What color is the {b['label']} bar?", b["color"], "color"))
    pair = rng.choice(_pair_universe(record["split"]))
    qa.append(_qa(exist_question(*pair), "no", "exist", pope=[]))
    return qa


def describe(record: dict, rng: random.Random) -> None:
    record["captions"], record["grounding"] = _captions(record)
    qa: list[dict] = []
    if record["objects"]:
        qa += _object_questions(rng, record)
    if any(t["role"] == "sign" for t in record["texts"]):
        qa += _text_questions(rng, record)
    if record["bars"]:
        qa += _chart_questions(rng, record)
    for i, item in enumerate(qa):
        item["id"] = i
    record["qa"] = qa
