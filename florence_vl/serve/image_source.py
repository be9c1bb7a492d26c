"""Images in requests: a data: URL, bare base64, or a local path under an allowed folder; never a remote URL.

Every refusal is an ApiError with one line: 400 for what cannot be read, 403 for a path the server may not
read, 413 for an image with more pixels than allowed (checked from the header, before decoding).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..images import load_image
from .errors import ApiError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)

_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


def decode_image_source(value: str, *, allow_dirs: Sequence[Path] = (), max_pixels: int) -> Image.Image:
    """The request's `image` field -> an upright RGB PIL image."""
    value = value.strip()
    lower = value[:16].lower()
    if lower.startswith(("http://", "https://", "ftp://")):
        raise ApiError(400, "remote image URLs are not fetched by this server; send the image as a data: URL "
                       "or base64", "remote_url_refused")
    if lower.startswith("data:"):
        return _open_bytes(_data_url_bytes(value), max_pixels)
    if lower.startswith("file://"):
        return _open_path(value[len("file://"):], allow_dirs, max_pixels)
    raw = _base64_bytes(value)
    if raw is not None and (raw.startswith(_MAGIC) or not allow_dirs):  # "photos/cat" is base64 too
        return _open_bytes(raw, max_pixels)
    if not allow_dirs:
        raise ApiError(400, "image must be a data: URL or base64-encoded image bytes (local paths are off: "
                       "start the server with --allow-dir DIR)", "bad_image")
    return _open_path(value, allow_dirs, max_pixels)


def _data_url_bytes(value: str) -> bytes:
    match = _DATA_URL.match(value)
    if not match:
        raise ApiError(400, "malformed data: URL; expected data:image/<type>;base64,<data>", "bad_image")
    if not match.group("b64"):
        raise ApiError(400, "data: URL must be base64-encoded (data:image/png;base64,...)", "bad_image")
    raw = _base64_bytes(value[match.end():])
    if raw is None:
        raise ApiError(400, "data: URL does not hold valid base64", "bad_image")
    return raw


def _base64_bytes(text: str) -> bytes | None:
    compact = "".join(text.split())
    if len(compact) < 8:
        return None
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _open_bytes(raw: bytes, max_pixels: int) -> Image.Image:
    if not raw:
        raise ApiError(400, "image is empty", "bad_image")
    return _decode(io.BytesIO(raw), "image", max_pixels)


def _open_path(value: str, allow_dirs: Sequence[Path], max_pixels: int) -> Image.Image:
    if not allow_dirs:
        raise ApiError(403, "local image paths are off on this server (start it with --allow-dir DIR)",
                       "local_paths_off")
    if "\x00" in value:
        raise ApiError(400, "image path contains a NUL byte", "bad_image")
    try:  # a name too long for the file system, or a symlink loop, is the client's mistake, not a 500
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = allow_dirs[0] / candidate
        resolved = candidate.resolve()  # follows symlinks and "..": the real file is what must be allowed
        if not any(resolved.is_relative_to(d) for d in allow_dirs):
            raise ApiError(403, "image path is outside the allowed directories", "path_not_allowed")
        found = resolved.is_file()
    except RuntimeError:  # Python 3.11's resolve() on a symlink loop
        raise ApiError(400, f"image path cannot be read (symlink loop): {_short(value)}", "bad_image") from None
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else "cannot be resolved"
        raise ApiError(400, f"image path cannot be read ({reason}): {_short(value)}", "bad_image") from None
    if not found:
        raise ApiError(400, f"image not found: {_short(value)}", "image_not_found")
    return _decode(resolved, _short(value), max_pixels)


def _short(value: str, limit: int = 120) -> str:
    """A client's path as it goes back in a message: one line, not the whole of a 5,000-character name."""
    value = value.replace("\n", " ").replace("\r", " ")
    return value if len(value) <= limit else value[:limit] + f"... ({len(value)} characters)"


def _decode(source, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(413, f"image has {width}x{height} = {width * height} pixels; this server "
                               f"takes at most {max_pixels}", "image_too_large")
            image.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, f"{name}: image is too large (decompression bomb guard)", "image_too_large") from None
    except UnidentifiedImageError:
        raise ApiError(400, f"{name} is not an image Pillow can read", "bad_image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(400, f"{name}: cannot read image ({error})", "bad_image") from None
    try:
        return load_image(image)
    except InputError as error:
        raise ApiError(400, str(error), "bad_image") from None
