"""What a server allows: limits, the API key, the local-image allow-list and the batching knobs, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None               # when set, /v1/* needs "Authorization: Bearer <key>"
    allow_dirs: tuple[Path, ...] = ()         # local image paths are read only under these (resolved) folders
    max_body_bytes: int = 20 * 1024 * 1024    # request body, as sent (base64 images included)
    body_timeout_s: float = 30.0              # the whole body must arrive within this, or 408 (slowloris)
    header_timeout_s: float = 30.0            # and the headers before it (florence_vl/serve/protocol.py)
    max_image_pixels: int = 16 * 1024 * 1024  # width x height of a decoded image
    max_prompt_chars: int = 1000              # the text input of a task
    max_prompt_tokens: int = 4096             # a chat prompt, in LLM positions (the image's features included)
    max_new_tokens: int = 1024                # the most a request may ask for (and the default)
    max_beams: int = 5
    default_beams: int = 3
    max_batch_size: int = 8                   # 1 = one request at a time
    batch_window_ms: float = 10.0
    max_queue: int = 64                       # waiting requests; beyond it 503 + Retry-After
    max_active: int | None = None             # requests with a body in the server at once (None: active_limit)
    model_name: str = "florence-2"
    chat_model_name: str = "florence-vl"

    def __post_init__(self):
        for name in ("max_body_bytes", "max_image_pixels", "max_prompt_chars", "max_prompt_tokens", "max_new_tokens",
                     "max_beams", "default_beams", "max_batch_size", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_active is not None and self.max_active < 1:
            raise ValueError("max_active must be at least 1")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.batch_window_ms < 0:
            raise ValueError("batch_window_ms must not be negative")
        object.__setattr__(self, "allow_dirs", tuple(Path(d).resolve() for d in self.allow_dirs))

    @property
    def active_limit(self) -> int:
        """`max_active`, or room for both services' full queues and running batches."""
        return self.max_active or 2 * (self.max_queue + self.max_batch_size)
