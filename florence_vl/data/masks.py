"""From a visible mask to its annotation: the exact box and the outer outline polygons of its parts.

Pixel (i, j) covers [j, j+1] x [i, i+1]; outlines run along pixel corners, clockwise, simplified by
Douglas-Peucker; holes are not kept.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

def mask_box(mask: np.ndarray) -> list[int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _trace(mask: np.ndarray) -> list[tuple[int, int]]:
    """Outer boundary (pixel corners, clockwise) of the 4-connected component of the first pixel in raster order."""
    grid = np.pad(mask, 1).tolist()  # a zero border: every lookup stays in range
    flat = np.flatnonzero(np.asarray(grid, bool))
    width = len(grid[0])
    y0, x0 = divmod(int(flat[0]), width)
    dxs, dys = (1, 0, -1, 0), (0, 1, 0, -1)  # E S W N
    pts, x, y, d = [(x0, y0)], x0 + 1, y0, 0
    while (x, y) != (x0, y0):
        if d == 0:
            left, right = grid[y - 1][x], grid[y][x]
        elif d == 1:
            left, right = grid[y][x], grid[y][x - 1]
        elif d == 2:
            left, right = grid[y][x - 1], grid[y - 1][x - 1]
        else:
            left, right = grid[y - 1][x - 1], grid[y - 1][x]
        nd = (d + 1) % 4 if not right else (d + 3) % 4 if left else d
        if nd != d:
            pts.append((x, y))
        d = nd
        x, y = x + dxs[d], y + dys[d]
    return [(px - 1, py - 1) for px, py in pts]


def _simplify(points: np.ndarray, eps: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline (first and last points kept)."""
    if len(points) < 3:
        return points
    a, b = points[0], points[-1]
    ab = b - a
    norm = math.hypot(*ab)
    rel = points - a
    dist = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / norm if norm else np.hypot(rel[:, 0], rel[:, 1])
    i = int(dist.argmax())
    if dist[i] <= eps:
        return points[[0, -1]]
    return np.concatenate([_simplify(points[:i + 1], eps)[:-1], _simplify(points[i:], eps)])


def mask_polygons(mask: np.ndarray, min_pixels: int = 6, eps: float = 1.2) -> list[list[float]]:
    """Outer outlines of the visible parts of a mask, largest first (at most 4 parts, <= 40 points each)."""
    box = mask_box(mask)
    crop = mask[box[1]:box[3], box[0]:box[2]].copy()
    parts = []
    while crop.sum() >= min_pixels and len(parts) < 4:
        outline = np.array(_trace(crop), float)
        filled = Image.new("1", (crop.shape[1], crop.shape[0]), 0)
        ImageDraw.Draw(filled).polygon([tuple(p) for p in outline - 0.5], fill=1)
        part = crop & np.asarray(filled, bool)
        if not part.any():  # cannot happen for a traced outline; guard against an endless loop
            break
        crop &= ~part
        if part.sum() < min_pixels:
            continue
        closed = np.concatenate([outline, outline[:1]])
        far = int(np.hypot(*(closed - closed[0]).T).argmax())
        simple = np.concatenate([_simplify(closed[:far + 1], eps)[:-1], _simplify(closed[far:], eps)[:-1]])
        e = eps
        while len(simple) > 40:
            e *= 1.5
            simple = np.concatenate([_simplify(closed[:far + 1], e)[:-1], _simplify(closed[far:], e)[:-1]])
        if len(simple) >= 3:
            parts.append((int(part.sum()), (simple + (box[0], box[1])).ravel().tolist()))
    parts.sort(key=lambda p: -p[0])
    return [[round(float(v), 2) for v in poly] for _, poly in parts]
