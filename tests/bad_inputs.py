"""A generated corpus of bad and awkward image files, with what a correct loader must do with each.

Nothing is downloaded: every file is made here from seeded patterns, so the corpus is the same on every
machine. `corpus()` returns Cases; `write_corpus(folder)` writes them and returns (case, path) pairs.

expect: "error" (a clear InputError), "ok" (an image; `pixels`, when given, is the upright RGB picture a
viewer shows, compared exactly or within `tolerance` mean absolute difference for lossy formats), or
"either" (a damaged file: an error, or an image whose pixels, when `pixels` is given, are exactly those).

EXIF orientations are built from the EXIF 2.32 definition of tag 0x0112 (which stored row/column is the
displayed top/left), not from Pillow's transpose table, so the check does not trust the code it tests.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112


@dataclass
class Case:
    name: str
    suffix: str
    data: bytes
    kind: str
    expect: str                              # "error" | "ok" | "either"
    pixels: np.ndarray | None = None         # upright RGB, (H, W, 3) uint8
    tolerance: float = 0.0                   # allowed mean |difference| for lossy formats
    size: tuple[int, int] | None = None      # displayed (width, height) when known

    @property
    def filename(self) -> str:
        return self.name + self.suffix


# ------------------------------------------------------------------------------------------ patterns


def pattern(width: int, height: int, seed: int = 0, smooth: bool = False) -> np.ndarray:
    """An asymmetric RGB picture: a red block near the top-left marks the orientation.

    smooth=True (gradients) survives lossy coding; otherwise random pixels, for exact comparisons.
    """
    rng = np.random.default_rng(seed)
    if smooth:
        x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
        y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
        out = np.stack([x, y, np.full_like(x, 90)], -1).astype(np.uint8)
    else:
        out = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bx0, by0, bx1, by1 = marker_box(width, height)
    out[by0:by1, bx0:bx1] = (255, 0, 0)
    return out


def marker_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The marker block [x0, y0, x1, y1) of `pattern`: off-centre, so each of the 8 orientations moves it."""
    x0, y0 = width // 8, height // 5
    return x0, y0, max(x0 + 1, width * 3 // 8), max(y0 + 1, height * 9 // 20)


def stored_for(display: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels to store so that a viewer honouring EXIF `orientation` shows `display`.

    EXIF: orientation names which side of the displayed picture the stored 0th row and 0th column are:
    1 top/left, 2 top/right, 3 bottom/right, 4 bottom/left, 5 left/top, 6 right/top, 7 right/bottom,
    8 left/bottom.
    """
    d = display
    return {
        1: d,
        2: d[:, ::-1],
        3: d[::-1, ::-1],
        4: d[::-1],
        5: d.transpose(1, 0, 2),
        6: np.rot90(d, 1),           # stored[i, j] = display[j, W-1-i]
        7: np.rot90(d, 1)[:, ::-1],  # stored[i, j] = display[H-1-j, W-1-i]
        8: np.rot90(d, -1),          # stored[i, j] = display[H-1-j, i]
    }[orientation].copy()


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    # a copy: some Pillow writers change the image they save (a palette made RGBA by WebP stays so)
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image.copy()
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """A reference decode of a well-formed file (first frame, no EXIF handling)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


# ------------------------------------------------------------------------------------------ crafted headers


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG declaring width x height with one tiny IDAT: what a decompression bomb's header looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def gif_header_only(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x4c\x01\x00;"


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def tiff_header_only(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, count, value, 0)
        for tag, kind, count, value in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 16) + b"\0" * 8 + ifd


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 marker is patched to declare width x height."""
    data = bytearray(encode(pattern(16, 16, smooth=True), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_vp8x_with_size(width: int, height: int) -> bytes:
    """A WebP whose extended header (VP8X) declares a canvas of width x height around a small image."""
    small = encode(pattern(8, 8), "WEBP", lossless=True)
    body = small[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    payload = b"WEBP" + vp8x + body
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


# ------------------------------------------------------------------------------------------ the corpus


NOT_IMAGES = {
    "empty": b"",
    "text": b"hello, this is a text file\n",
    "html": b"<!doctype html><html><body><img src=x></body></html>",
    "json": b'{"image": "nope", "size": [10, 10]}',
    "zeros": b"\0" * 4096,
    "random": bytes(random.Random(7).randrange(256) for _ in range(4096)),
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "zip": b"PK\x03\x04" + b"\0" * 60,
    "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 57,
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    "png-signature-only": b"\x89PNG\r\n\x1a\n",
    "jpeg-soi-only": b"\xff\xd8\xff",
    "gif-magic-only": b"GIF89a",
    "riff-webp-only": b"RIFF\x04\0\0\0WEBP",
}
SUFFIXES = [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif"]


def _seeds() -> dict[str, tuple[str, bytes, np.ndarray | None]]:
    """Well-formed files to damage: name -> (suffix, bytes, upright pixels of the first frame if lossless)."""
    still = pattern(37, 23, seed=1)
    smooth = pattern(37, 23, smooth=True)
    second = pattern(37, 23, seed=2)
    palette = Image.fromarray(still).quantize(16)
    pal_rgb = np.asarray(palette.convert("RGB"))
    return {
        "png": (".png", encode(still, "PNG"), still),
        "png-interlaced": (".png", encode(palette, "PNG", optimize=False), pal_rgb),
        "jpeg": (".jpg", encode(smooth, "JPEG", quality=90), None),
        "jpeg-progressive": (".jpg", encode(smooth, "JPEG", quality=90, progressive=True), None),
        "jpeg-exif": (".jpg", encode(smooth, "JPEG", quality=90, exif=_exif(6)), None),
        "webp-lossy": (".webp", encode(smooth, "WEBP", quality=90), None),
        "webp-lossless": (".webp", encode(still, "WEBP", lossless=True), still),
        "gif": (".gif", encode(palette, "GIF"), pal_rgb),
        "gif-animated": (".gif", encode(palette, "GIF", save_all=True,
                                        append_images=[Image.fromarray(second).quantize(16)]), pal_rgb),
        "webp-animated": (".webp", encode(still, "WEBP", lossless=True, save_all=True,
                                          append_images=[Image.fromarray(second)]), still),
        "png-animated": (".png", encode(still, "PNG", save_all=True, append_images=[Image.fromarray(second)]),
                         still),
        "bmp": (".bmp", encode(still, "BMP"), still),
        "tiff": (".tif", encode(still, "TIFF"), still),
    }


def _damaged(seeds, flips_per_seed: int, rng: random.Random) -> list[Case]:
    cases = []
    for name, (suffix, data, pixels) in seeds.items():
        n = len(data)
        cuts = sorted({0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, n - 1, n - 2, n - 8}
                      | {n * i // 12 for i in range(1, 12)})
        for cut in cuts:
            if 0 <= cut < n:
                # A truncated file that still loads must be the intact first frame (the cut fell after it).
                cases.append(Case(f"truncated-{name}-{cut}", suffix, data[:cut], "truncated", "either",
                                  pixels=decode_rgb(data) if pixels is None else pixels))
        for i in range(flips_per_seed):
            damaged = bytearray(data)
            for _ in range(rng.choice([1, 2, 3, 8, 32])):
                damaged[rng.randrange(n)] = rng.randrange(256)
            cases.append(Case(f"corrupt-{name}-{i}", suffix, bytes(damaged), "corrupt", "either"))
        # a 4 KiB run of garbage spliced into the middle, and the file's halves swapped
        cases.append(Case(f"corrupt-{name}-splice", suffix, data[: n // 2] + bytes(4096) + data[n // 2:],
                          "corrupt", "either"))
        cases.append(Case(f"corrupt-{name}-swapped", suffix, data[n // 2:] + data[: n // 2], "corrupt", "either"))
    return cases


def _modes() -> list[Case]:
    cases = []
    rgb = pattern(6, 5, seed=3)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    gray3 = np.repeat(gray[..., None], 3, -1)
    rgba = np.dstack([rgb, np.linspace(0, 255, 30, dtype=np.uint8).reshape(5, 6)])
    la = np.dstack([gray, np.full_like(gray, 7)])
    bits = (gray > 127).astype(np.uint8) * 255
    palette = Image.fromarray(rgb).quantize(8)
    pal_rgb = np.asarray(palette.convert("RGB"))
    g16 = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2183)  # 0 .. 63307
    g16_ref = np.repeat((g16 >> 8).astype(np.uint8)[..., None], 3, -1)
    g32 = g16.astype(np.int32)
    f01 = (np.arange(30, dtype=np.float32).reshape(5, 6) / 29)
    f01_ref = np.repeat(np.rint(f01 * 255).astype(np.uint8)[..., None], 3, -1)
    cmyk = Image.new("CMYK", (5, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 0, 0), (0, 0, 255, 0)])
    cmyk_ref = np.array([[[255, 255, 255], [0, 255, 255], [0, 0, 0], [255, 0, 255], [255, 255, 0]]], np.uint8)
    pa = palette.copy()
    pa.info["transparency"] = 0
    plain = {
        "rgb": (Image.fromarray(rgb), rgb),
        "rgba": (Image.fromarray(rgba, "RGBA"), rgb),            # alpha dropped, colour kept
        "l": (Image.fromarray(gray, "L"), gray3),
        "la": (Image.fromarray(la, "LA"), gray3),
        "1": (Image.fromarray(bits, "L").convert("1"), np.repeat(bits[..., None], 3, -1)),
        "p": (palette, pal_rgb),
        "p-transparency": (pa, pal_rgb),
    }
    lossless = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif"}
    for mode, (image, ref) in plain.items():
        for fmt, suffix in lossless.items():
            if fmt == "GIF" and mode not in ("l", "p", "1", "p-transparency"):
                continue
            if fmt == "BMP" and mode in ("la", "p-transparency"):
                continue
            options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}  # exact: keep hidden colours
            cases.append(Case(f"mode-{mode}-{fmt.lower()}", suffix, encode(image, fmt, **options), "mode", "ok",
                              pixels=ref))
        cases.append(Case(f"mode-{mode}-jpeg", ".jpg", encode(image.convert("RGB" if mode not in ("l", "1") else "L"),
                                                               "JPEG", quality=95, subsampling=0),
                          "mode", "ok", pixels=ref, tolerance=20))
    deep = {
        "i16-png": (Image.fromarray(g16), "PNG", ".png", g16_ref),
        "i16-tiff": (Image.fromarray(g16), "TIFF", ".tif", g16_ref),
        "i32-tiff": (Image.fromarray(g32, "I"), "TIFF", ".tif", np.repeat(
            np.rint(g16 / 257).astype(np.uint8)[..., None], 3, -1)),
        "f32-tiff": (Image.fromarray(f01, "F"), "TIFF", ".tif", f01_ref),
        "cmyk-tiff": (cmyk, "TIFF", ".tif", cmyk_ref),
        "cmyk-jpeg": (cmyk, "JPEG", ".jpg", cmyk_ref),
        "ycbcr-tiff": (Image.fromarray(gray3).convert("YCbCr"), "TIFF", ".tif", gray3),
        "rgb16-png": (None, "PNG", ".png", None),
    }
    for name, (image, fmt, suffix, ref) in deep.items():
        if name == "rgb16-png":  # Pillow cannot write it; write the PNG by hand: 65535, 32768, 0 everywhere
            raw = b"".join(b"\0" + struct.pack(">HHH", 65535, 32768, 0) * 4 for _ in range(3))
            data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 16, 2, 0, 0, 0))
                    + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
            ref = np.tile(np.array([255, 128, 0], np.uint8), (3, 4, 1))
            cases.append(Case(f"mode-{name}", suffix, data, "mode", "ok", pixels=ref))
            continue
        tolerance = 8 if fmt == "JPEG" else 1.0 if name == "ycbcr-tiff" else 0.0
        cases.append(Case(f"mode-{name}", suffix, encode(image, fmt), "mode", "ok", pixels=ref, tolerance=tolerance))
    # 1x1 images in every format
    one = np.array([[[12, 200, 77]]], np.uint8)
    for fmt, suffix in {**lossless, "JPEG": ".jpg"}.items():
        image = Image.fromarray(one).quantize(4) if fmt == "GIF" else Image.fromarray(one)
        options = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
        cases.append(Case(f"tiny-1x1-{fmt.lower()}", suffix, encode(image, fmt, **options), "tiny", "ok",
                          pixels=one, tolerance=6 if fmt in ("JPEG", "GIF") else 0))
    for w, h in [(1, 2), (2, 1), (1, 3), (3, 1), (3, 3), (2, 2)]:
        tiny = pattern(w, h, seed=w * 10 + h)
        cases.append(Case(f"tiny-{w}x{h}-png", ".png", encode(tiny, "PNG"), "tiny", "ok", pixels=tiny))
    return cases


def _zero_and_bombs() -> list[Case]:
    cases = []
    for w, h in [(0, 5), (5, 0), (0, 0)]:
        cases.append(Case(f"zero-{w}x{h}-png", ".png", png_header_only(w, h), "zero-size", "error"))
        cases.append(Case(f"zero-{w}x{h}-gif", ".gif", gif_header_only(w, h), "zero-size", "error"))
        cases.append(Case(f"zero-{w}x{h}-bmp", ".bmp", bmp_header_only(w, h), "zero-size", "error"))
        cases.append(Case(f"zero-{w}x{h}-tif", ".tif", tiff_header_only(w, h), "zero-size", "error"))
    cases.append(Case("zero-0x16-jpeg", ".jpg", jpeg_with_size(16, 0), "zero-size", "error"))
    cases.append(Case("zero-16x0-jpeg", ".jpg", jpeg_with_size(0, 16), "zero-size", "error"))
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    side = int(limit ** 0.5) + 10          # just over the limit (Pillow only warns between 1x and 2x)
    for w, h in [(side, side), (100_000, 100_000), (2**31 - 1, 1), (1, limit + 1), (65_535, 65_535)]:
        cases.append(Case(f"bomb-{w}x{h}-png", ".png", png_header_only(w, h), "bomb", "error"))
    for w, h in [(side, side), (65_535, 65_535)]:
        cases.append(Case(f"bomb-{w}x{h}-gif", ".gif", gif_header_only(w, h), "bomb", "error"))
        cases.append(Case(f"bomb-{w}x{h}-bmp", ".bmp", bmp_header_only(w, h), "bomb", "error"))
        cases.append(Case(f"bomb-{w}x{h}-tif", ".tif", tiff_header_only(w, h), "bomb", "error"))
        cases.append(Case(f"bomb-{w}x{h}-jpeg", ".jpg", jpeg_with_size(w, h), "bomb", "error"))
    cases.append(Case("bomb-16384x16384-webp", ".webp", webp_vp8x_with_size(16384, 16384), "bomb", "error"))
    return cases


def _orientations() -> list[Case]:
    cases = []
    for w, h in [(40, 24), (18, 30)]:
        exact = pattern(w, h, seed=w)
        smooth = pattern(w, h, smooth=True)
        for k in range(1, 9):
            for fmt, suffix, display, options, tol in [
                    ("PNG", ".png", exact, {}, 0), ("WEBP", ".webp", exact, {"lossless": True}, 0),
                    ("JPEG", ".jpg", smooth, {"quality": 95, "subsampling": 0}, 6)]:
                data = encode(stored_for(display, k), fmt, exif=_exif(k), **options)
                cases.append(Case(f"exif-{k}-{w}x{h}-{fmt.lower()}", suffix, data, "exif", "ok", pixels=display,
                                  tolerance=tol, size=(w, h)))
        # orientation values outside 1..8 mean nothing: shown as stored
        for value in (0, 9, 100, 65535):
            data = encode(exact, "PNG", exif=_exif(value))
            cases.append(Case(f"exif-invalid-{value}-{w}x{h}", ".png", data, "exif", "ok", pixels=exact, size=(w, h)))
    # damaged EXIF blocks in a JPEG that says "rotate": either orientation may win, never a crash
    data = encode(pattern(24, 16, smooth=True), "JPEG", exif=_exif(6))
    start = data.index(b"Exif")
    rng = random.Random(11)
    for i in range(60):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 2, 4])):
            damaged[rng.randrange(start, start + 64)] = rng.randrange(256)
        cases.append(Case(f"exif-corrupt-{i}", ".jpg", bytes(damaged), "exif", "either"))
    return cases


def _animated() -> list[Case]:
    cases = []
    for frames in (2, 3, 12):
        pictures = [pattern(20, 14, seed=100 + i) for i in range(frames)]
        images = [Image.fromarray(p) for p in pictures]
        gif_frames = [im.quantize(32) for im in images]
        cases.append(Case(f"animated-{frames}-gif", ".gif", encode(gif_frames[0], "GIF", save_all=True,
                          append_images=gif_frames[1:], duration=40, loop=0), "animated", "ok",
                          pixels=np.asarray(gif_frames[0].convert("RGB"))))
        cases.append(Case(f"animated-{frames}-webp", ".webp", encode(images[0], "WEBP", lossless=True, save_all=True,
                          append_images=images[1:], duration=40), "animated", "ok", pixels=pictures[0]))
        cases.append(Case(f"animated-{frames}-apng", ".png", encode(images[0], "PNG", save_all=True,
                          append_images=images[1:], duration=40), "animated", "ok", pixels=pictures[0]))
    return cases


def _aspects() -> list[Case]:
    cases = []
    for w, h in [(1, 400), (400, 1), (2, 900), (900, 2), (5, 300), (300, 5), (3, 64), (64, 3), (1000, 10),
                 (10, 1000), (4000, 3), (3, 4000), (16383, 1)]:
        picture = pattern(w, h, smooth=True)  # smooth: nothing but the marker is red, even at 1 px wide
        cases.append(Case(f"aspect-{w}x{h}-png", ".png", encode(picture, "PNG"), "aspect", "ok", pixels=picture,
                          size=(w, h)))
    for w, h in [(600, 12), (12, 600)]:
        picture = pattern(w, h, smooth=True)
        cases.append(Case(f"aspect-{w}x{h}-jpeg", ".jpg", encode(picture, "JPEG", quality=95, subsampling=0),
                          "aspect", "ok", pixels=picture, tolerance=8, size=(w, h)))
    return cases


def corpus(seed: int = 0, flips_per_seed: int = 36) -> list[Case]:
    """The whole corpus (about 1,100 files, a few hundred KB), deterministic for a seed."""
    rng = random.Random(seed)
    cases = [Case(f"not-image-{name}", suffix if suffix != ".jpeg" else ".jpeg", data, "not-image", "error")
             for name, data in NOT_IMAGES.items() for suffix in SUFFIXES]
    cases += _damaged(_seeds(), flips_per_seed, rng)
    cases += _modes() + _zero_and_bombs() + _orientations() + _animated() + _aspects()
    names = [c.filename for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def write_corpus(folder: str | Path, cases: list[Case] | None = None) -> list[tuple[Case, Path]]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for case in corpus() if cases is None else cases:
        path = folder / case.filename
        path.write_bytes(case.data)
        out.append((case, path))
    return out
