"""Chat templates as data: `plain` (stage 1), `phi3` and `llama3` as the Florence-VL release writes them,
and `tokenizer` (the tokenizer's own chat template, inference only).

A conversation renders to segments (text, is_target): training supervises the target segments only (the
assistant's answers and their end markers); inference renders the prompt up to the assistant's turn.
"<image>" in the text marks where the image features go.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

IMAGE = "<image>"


@dataclass(frozen=True)
class Template:
    name: str
    system: str          # text before the first turn, including its separator
    user: str            # role prefix of a user turn
    assistant: str       # role prefix of an assistant turn
    sep: str             # ends every message
    plain: bool = False  # stage 1: the image alone is the prompt, the answer follows directly


TEMPLATES = {
    "plain": Template("plain", "", "", "", "\n", plain=True),
    "phi3": Template("phi3", "<|system|>\nYou are a helpful AI assistant.<|end|>", "\n<|user|>\n",
                     "\n<|assistant|>\n", "<|end|>"),
    "llama3": Template("llama3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nA chat between a "
                       "curious user and an artificial intelligence assistant. The assistant gives helpful, "
                       "detailed, and polite answers to the user's questions.<|eot_id|>",
                       "<|start_header_id|>user<|end_header_id|>\n\n",
                       "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
}
TEMPLATE_NAMES = tuple(TEMPLATES) + ("tokenizer",)


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise InputError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[name]


def _with_image_first(text: str) -> str:
    """The release puts the image first: "<image>\\n" + the question without its own marker."""
    return IMAGE + "\n" + text.replace(IMAGE, "").strip() if IMAGE in text else text


def render(template: Template, turns: list[tuple[str, str | None]]) -> list[tuple[str, bool]]:
    """[(user, answer or None), ...] -> [(text, is_target)]. A final None answer leaves the prompt open."""
    if template.plain:
        if len(turns) != 1:
            raise InputError("the plain template holds one image and one answer (stage 1)")
        segments = [(IMAGE, False)]
        if turns[0][1] is not None:
            segments.append((turns[0][1] + template.sep, True))
        return segments
    segments = [(template.system, False)] if template.system else []
    for k, (user, answer) in enumerate(turns):
        user = _with_image_first(user) if k == 0 else user
        segments.append((template.user + user + template.sep + template.assistant, False))
        if answer is not None:
            segments.append((answer + template.sep, True))
    return segments


def render_with_tokenizer(tokenizer, turns: list[tuple[str, str | None]]) -> list[tuple[str, bool]]:
    """The tokenizer's own chat template (prompt only: no targets)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this tokenizer has no chat template; use --template plain, phi3 or llama3")
    messages = []
    for k, (user, answer) in enumerate(turns):
        messages.append({"role": "user", "content": _with_image_first(user) if k == 0 else user})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=turns[-1][1] is None)
    return [(text, False)]
