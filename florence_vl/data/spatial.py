"""Where boxes are: reading order, which of the five POSITIONS a box is in, RELATIONS between two boxes.

Boxes are [x0, y0, x1, y1] in pixels, x right, y down; positions and relations go by box centres.
"""

from __future__ import annotations


def box_center(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def reading_order_key(box) -> tuple:
    return (box[1], box[0], box[3], box[2])


def position_of(box, size) -> str:
    """Which of POSITIONS the box centre is in: center within 1/6 of the middle, else the dominant side."""
    cx, cy = box_center(box)
    dx, dy = cx / size[0] - 0.5, cy / size[1] - 0.5
    if max(abs(dx), abs(dy)) < 1 / 6:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def position_is_clear(box, size) -> bool:
    cx, cy = box_center(box)
    dx, dy = abs(cx / size[0] - 0.5), abs(cy / size[1] - 0.5)
    return abs(max(dx, dy) - 1 / 6) > 0.04 and (max(dx, dy) < 1 / 6 or abs(dx - dy) > 0.06)


def relation(a_box, b_box, min_gap: float = 0.0, clear: bool = False) -> str | None:
    """The relation of box a to box b by the dominant axis between centres ("left of" = a is left of b).

    With clear=True the dominant offset must be at least 1.5 x the other one and at least `min_gap`.
    """
    (ax, ay), (bx, by) = box_center(a_box), box_center(b_box)
    dx, dy = bx - ax, by - ay
    major, minor = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if major == 0 or (clear and (major < 1.5 * minor or major < min_gap)):
        return None
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


