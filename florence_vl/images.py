"""Opening user images: one clear error per bad file, and one coordinate frame for everything after.

EXIF orientation is applied on load, so the frame every coordinate refers to is the image as a viewer
shows it; drawing and parsing then use that same upright image and its size.

Whatever the bytes, `load_image` returns an upright RGB image or raises InputError with one line:
- files: missing, a directory, not a regular file (a FIFO would block), unreadable path -> InputError;
- decoding: unknown format, truncated or corrupt data, more pixels than Pillow's decompression-bomb limit
  (`Image.MAX_IMAGE_PIXELS`, checked from the header before any pixel is decoded) -> InputError;
- animated images: the first frame;
- modes: alpha is dropped (the colour under it is kept), palettes expanded, CMYK/YCbCr/LAB converted,
  16-bit images scaled to 8 bits (not clipped), 32-bit integer and float images scaled by their range.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def shown(path: str | Path) -> str:
    """A path as one printable line: control characters (newlines, NUL) escaped, very long names shortened."""
    text = str(path)
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 300 else text[:150] + "..." + text[-100:]


def _check_pixels(width: int, height: int, where: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if width < 1 or height < 1:
        raise InputError(f"{where}: image has no pixels ({width}x{height})")
    if limit and width * height > limit:
        raise InputError(f"{where}: image is too large: {width}x{height} = {width * height} pixels, more than "
                         f"{limit} (decompression bomb guard, PIL.Image.MAX_IMAGE_PIXELS)")


def _open(path: Path) -> Image.Image:
    """Decode the first frame of `path` into memory and close the file."""
    where = shown(path)
    try:
        if not path.exists():
            raise InputError(f"image not found: {where}")
        if path.is_dir():
            raise InputError(f"{where} is a directory, not an image")
        if not path.is_file():
            raise InputError(f"{where} is not a regular file")
    except OSError as error:  # e.g. a file name too long for the file system
        raise InputError(f"cannot open {where} ({error.strerror or error})") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns about recoverable damage (corrupt EXIF, truncated metadata); the outcome is an
            # image or an error either way, and a CLI user should see one line, not the warnings.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixels(image.width, image.height, where)  # from the header, before decoding
                image.load()
                # exif_transpose and convert make new images; a copy detaches the rest from the file.
                return _upright_rgb(image, where, copy=True)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{where}: image is too large (decompression bomb guard)") from None
    except UnidentifiedImageError:
        raise InputError(f"{where} is not an image Pillow can read") from None
    except MemoryError:
        raise InputError(f"{where}: not enough memory to decode this image") from None
    except Exception as error:  # any decoder failure on user bytes: truncated, corrupt, unsupported
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{where}: cannot read image ({shown(detail)})") from None


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """One-channel images of more than 8 bits -> mode L, scaled rather than clipped.

    I;16*: value >> 8. I (32-bit int) and F (float): values already in 0..255 kept; I in 0..65535 treated
    as 16-bit; F in 0..1 scaled by 255; anything else stretched from its min..max to 0..255.
    """
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), "L")
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if low >= 0 and high <= 255 and not (image.mode == "F" and high <= 1):
        scaled = values
    elif image.mode == "F" and low >= 0 and high <= 1:
        scaled = values * 255
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scaled = values / 257
    else:
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _upright_rgb(image: Image.Image, where: str, copy: bool = False) -> Image.Image:
    original = image
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _scaled_to_8_bits(image)
    if image.mode != "RGB":
        if "A" in image.mode or "a" in image.mode or image.mode == "P":
            image = image.convert("RGBA")
        image = image.convert("RGB")
    if copy and image is original:
        image = image.copy()
    if image.width < 1 or image.height < 1:
        raise InputError(f"{where}: image has no pixels")
    return image


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """A path or a PIL image -> an upright RGB PIL image; InputError for anything unusable."""
    if isinstance(source, Image.Image):
        where = "image"
        try:
            _check_pixels(source.width, source.height, where)
            return _upright_rgb(source, where)
        except InputError:
            raise
        except Exception as error:  # a lazily opened PIL image whose data turns out to be bad
            raise InputError(f"cannot convert image to RGB ({shown(str(error) or type(error).__name__)})") from None
    if not isinstance(source, (str, Path)):
        raise InputError(f"an image is a file path or a PIL image, not {type(source).__name__}")
    return _open(Path(source))


def find_images(directory: str | Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"not a directory: {shown(directory)}")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
