"""How labels are written down: the ignore index of segmentation masks and the palette of indexed mask PNGs."""

from __future__ import annotations

IGNORE_INDEX = 255
"""Mask value of pixels that no metric counts (Pascal VOC's object borders, void regions)."""


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS and Pascal VOC annotation PNGs (a bit-reversal colour map), flat RGB."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette
