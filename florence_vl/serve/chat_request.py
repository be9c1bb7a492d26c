"""OpenAI chat-completion requests: the body, and its messages turned into one conversation about one image.

    {"model": "florence-vl", "stream": true, "max_tokens": 64, "temperature": 0, "stop": ["\\n"],
     "messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]},
                  {"role": "assistant", "content": "A red circle."},
                  {"role": "user", "content": "And its colour?"}]}

Florence-VL sees one image: a request holds at most one `image_url` part (in a user message), and the
image goes where that message is. Text-only conversations are allowed. System (and developer) messages
are put before the first user message's text, since the chat templates keep a fixed system prompt.
Consecutive messages of one role are joined with a newline. A literal "<image>" in the text is removed
(it is the model's image marker). Every mistake is an ApiError with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..vl.templates import IMAGE
from .errors import ApiError

MAX_STOP = 4
# OpenAI fields this server does not do; any other unknown field is refused as unknown.
UNSUPPORTED = {"tools": None, "tool_choice": None, "functions": None, "function_call": None,
               "response_format": None, "logprobs": False, "top_logprobs": None, "n": 1, "seed": None,
               "presence_penalty": 0, "frequency_penalty": 0, "audio": None, "modalities": None,
               "prediction": None, "parallel_tool_calls": None, "reasoning_effort": None, "web_search_options": None}
IGNORED = ("user", "metadata", "store", "service_tier")  # bookkeeping fields, no effect on the answer


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    detail: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


@dataclass
class Conversation:
    """[(user text, answer or None)], the last answer None; `image_turn` holds the image (or none)."""

    turns: list[tuple[str, str | None]]
    image: str | None = None
    image_turn: int | None = None
    system: list[str] = field(default_factory=list)

    def turns_for_model(self) -> list[tuple[str, str | None]]:
        """The turns as the chat template takes them: the image marker first in the image's turn."""
        out = []
        for k, (user, answer) in enumerate(self.turns):
            if k == 0 and self.system:
                user = "\n\n".join(self.system + ([user] if user else []))
            if k == self.image_turn:
                user = IMAGE + "\n" + user
            out.append((user, answer))
        return out


def validation_message(errors: list[dict]) -> str:
    first = (errors or [{}])[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first.get('msg', 'invalid value')}"


def parse_body(raw: bytes) -> ChatBody:
    try:
        body = ChatBody.model_validate_json(raw)
    except ValidationError as error:
        raise ApiError(400, validation_message(error.errors()), "invalid_request") from None
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name in UNSUPPORTED:
            if value is None or value == UNSUPPORTED[name]:
                continue
            raise ApiError(400, f"{name} is not supported by this server", "unsupported_parameter")
        raise ApiError(400, f"unknown field {name!r}", "invalid_request")
    stops = body.stops
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOP} non-empty strings", "invalid_request")
    for value in (body.logit_bias or {}).values():
        if not -100 <= value <= 100:
            raise ApiError(400, "logit_bias values must be between -100 and 100", "invalid_request")
    return body


def _clean(text: str) -> str:
    return text.replace(IMAGE, "")


def _content(message: Message, index: int) -> tuple[str, list[str]]:
    """(text, image urls) of one message."""
    if message.content is None:
        return "", []
    if isinstance(message.content, str):
        return _clean(message.content), []
    texts, images = [], []
    for part in message.content:
        if part.type == "text":
            texts.append(_clean(part.text or ""))
        elif part.type == "image_url":
            if part.image_url is None:
                raise ApiError(400, f"messages.{index}: an image_url part needs image_url.url", "invalid_request")
            images.append(part.image_url if isinstance(part.image_url, str) else part.image_url.url)
        else:
            raise ApiError(400, f"messages.{index}: content parts of type {part.type!r} are not supported "
                           "(use text and image_url)", "unsupported_content")
    return "\n".join(t for t in texts if t), images


def parse_messages(messages: list[Message]) -> Conversation:
    system: list[str] = []
    merged: list[list] = []  # [role, text, images, first index]
    for i, message in enumerate(messages):
        role = message.role
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages.{i}: role {role!r} is not supported (use system, user, assistant)",
                           "invalid_request")
        text, images = _content(message, i)
        if role in ("system", "developer"):
            if images:
                raise ApiError(400, f"messages.{i}: images go in user messages", "invalid_request")
            if text.strip():
                system.append(text.strip())
            continue
        if role == "assistant" and images:
            raise ApiError(400, f"messages.{i}: images go in user messages", "invalid_request")
        if merged and merged[-1][0] == role:
            merged[-1][1] = "\n".join(t for t in (merged[-1][1], text) if t)
            merged[-1][2] += images
        else:
            merged.append([role, text, images, i])
    if not merged or merged[0][0] != "user":
        raise ApiError(400, "the conversation must start with a user message (after any system message)",
                       "invalid_request")
    if merged[-1][0] != "user":
        raise ApiError(400, "the last message must be the user's", "invalid_request")
    images = [(k // 2, url) for k, (role, _, urls, _) in enumerate(merged) for url in urls]
    if len(images) > 1:
        raise ApiError(400, f"this server takes at most one image per request (Florence-VL sees one image); "
                       f"got {len(images)}", "too_many_images")
    turns = [(merged[k][1].strip(), merged[k + 1][1].strip() if k + 1 < len(merged) else None)
             for k in range(0, len(merged), 2)]
    if not turns[-1][0] and not (images and images[0][0] == len(turns) - 1):
        raise ApiError(400, "the last user message is empty", "invalid_request")
    image_turn, image = images[0] if images else (None, None)
    return Conversation(turns, image, image_turn, system)
