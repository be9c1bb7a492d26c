"""Florence-2's tokenizer: BART's byte-level BPE plus the published added tokens, in the published order.

The original processor (microsoft/Florence-2-*) adds 1024 tokens to BART's 50265 at load time, giving the
51289-entry vocabulary of the released weights; transformers' native layout (florence-community/*) also
adds <image> (id 51289) as the placeholder its encoder replaces with image features. The order matters:
it fixes every token id, so a tokenizer missing them is completed here in exactly that order.
"""

from __future__ import annotations

import re
from typing import Iterable

from tokenizers import AddedToken

IMAGE_TOKEN = "<image>"
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
LOC_TOKENS = [f"<loc_{i}>" for i in range(1000)]
# Spelling ("desciption") is the published one; changing it would change nothing but break matching.
FLORENCE2_ADDED_TOKENS = (
    ["<od>", "</od>", "<ocr>", "</ocr>"]
    + LOC_TOKENS
    + ["<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>", "</grounding>",
       "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>", "<region_to_desciption>",
       "</region_to_desciption>", "<proposal>", "</proposal>", "<poly>", "</poly>", "<and>"]
)

_TASK_TOKEN_RE = r"<(?:CAPTION|DETAILED_CAPTION|MORE_DETAILED_CAPTION|OD|DENSE_REGION_CAPTION|REGION_PROPOSAL|" \
    r"CAPTION_TO_PHRASE_GROUNDING|REFERRING_EXPRESSION_SEGMENTATION|REGION_TO_SEGMENTATION|" \
    r"OPEN_VOCABULARY_DETECTION|REGION_TO_CATEGORY|REGION_TO_DESCRIPTION|REGION_TO_OCR|OCR|OCR_WITH_REGION)>"
_NAMED = [t for t in FLORENCE2_ADDED_TOKENS if not t.startswith("<loc_")] + BART_SPECIALS + ["<mask>", IMAGE_TOKEN]
SPECIAL_TOKEN_RE = re.compile(
    r"<loc_\d+>|" + _TASK_TOKEN_RE + "|" + "|".join(re.escape(t) for t in sorted(_NAMED, key=len, reverse=True))
)


def strip_special_tokens(text: str) -> str:
    """Remove every control token from user text so it cannot steer the encoder or the output parser."""
    return re.sub(r"\s{2,}", " ", SPECIAL_TOKEN_RE.sub(" ", text)).strip()


def ensure_florence2_tokens(tokenizer, with_image_token: bool = True) -> int:
    """Add any missing Florence-2 tokens (published order), then <image>. Returns how many were added.

    Sets `tokenizer.image_token` / `image_token_id`, which transformers' Florence2Processor expects.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in FLORENCE2_ADDED_TOKENS if t not in vocab]
    added = 0
    if missing:
        added += tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in missing]},
            replace_extra_special_tokens=False,
        )
    if with_image_token:
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            added += tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)],
                                          special_tokens=True)
        tokenizer.image_token = IMAGE_TOKEN
        tokenizer.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return added


def train_bart_tokenizer(corpus: Iterable[str], vocab_size: int = 2000):
    """A BART-style byte-level BPE tokenizer trained offline on `corpus`, with the Florence-2 tokens.

    Ids 0..3 are <s>, <pad>, </s>, <unk> as in BART; <mask> ends the base vocabulary; then the 1024
    Florence-2 tokens and <image>, exactly as in the published layout (only the BPE part is smaller).
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=BART_SPECIALS, show_progress=False)
    import json

    model = json.loads(bpe._tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = BartTokenizer(vocab=vocab, merges=merges)
    ensure_florence2_tokens(tokenizer)
    return tokenizer
