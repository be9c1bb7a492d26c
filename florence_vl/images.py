"""Opening user images: one clear error per bad file, and one coordinate frame for everything after.

EXIF orientation is applied on load, so the frame every coordinate refers to is the image as a viewer
shows it; drawing and parsing then use that same upright image and its size.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """A path or a PIL image -> an upright RGB PIL image; InputError for anything unusable."""
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"image not found: {path}")
        if path.is_dir():
            raise InputError(f"{path} is a directory, not an image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"{path}: image is too large (decompression bomb guard)") from None
        except UnidentifiedImageError:
            raise InputError(f"{path} is not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(f"{path}: cannot read image ({error})") from None
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGBA").convert("RGB") if "A" in image.mode or image.mode == "P" else image.convert("RGB")
    except (OSError, ValueError) as error:
        raise InputError(f"cannot convert image to RGB ({error})") from None
    if image.width < 1 or image.height < 1:
        raise InputError("image has no pixels")
    return image


def find_images(directory: str | Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"not a directory: {directory}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
