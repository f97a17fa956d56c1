"""Fitness over trials as a PNG: a small pure-Python drawing (an RGB canvas, lines and dots, digit labels
from a 3x5 font) written with a minimal PNG encoder, so the card's plot needs no plotting library."""

from __future__ import annotations

import math
import struct
import zlib
from typing import Sequence

WIDTH, HEIGHT = 640, 360
BG, AXIS, GRID = (255, 255, 255), (60, 60, 60), (225, 225, 225)
POINT, BEST, FAILED = (31, 119, 180), (214, 39, 40), (170, 170, 170)


def encode_png(width: int, height: int, rgb: bytes | bytearray) -> bytes:
    """An 8-bit RGB PNG from ``width*height*3`` bytes, rows top to bottom."""
    if len(rgb) != width * height * 3:
        raise ValueError("pixel data does not match the size")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    stride = width * 3
    raw = b"".join(b"\x00" + bytes(rgb[y * stride:(y + 1) * stride]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


# 3x5 glyphs, one row per string of three bits.
_FONT = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "001", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ".": ("000", "000", "000", "000", "010"), "-": ("000", "000", "111", "000", "000"),
    "+": ("000", "010", "111", "010", "000"), "e": ("000", "111", "111", "100", "111"),
    " ": ("000", "000", "000", "000", "000"),
}


class Canvas:
    def __init__(self, width: int, height: int, color=BG):
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(color) * (width * height))

    def set(self, x: int, y: int, color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.rect(x0 - width // 2, y0 - width // 2, x0 + (width - 1) // 2, y0 + (width - 1) // 2, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color=AXIS, scale: int = 2) -> None:
        for k, ch in enumerate(text):
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "1":
                        px = x + (k * 4 + col) * scale
                        self.rect(px, y + row * scale, px + scale - 1, y + row * scale + scale - 1, color)

    def text_width(self, text: str, scale: int = 2) -> int:
        return len(text) * 4 * scale - scale

    def png(self) -> bytes:
        return encode_png(self.width, self.height, self.pixels)


def _label(v: float) -> str:
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.4g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def best_so_far(values: Sequence[float | None], direction: str) -> list[float | None]:
    out, best = [], None
    for v in values:
        if v is not None and (best is None or (v < best if direction == "minimize" else v > best)):
            best = v
        out.append(best)
    return out


def render_png(values: Sequence[float | None], direction: str) -> bytes:
    """Dots: each trial's fitness (grey ticks at the bottom: failed trials); line: the best so far."""
    c = Canvas(WIDTH, HEIGHT)
    left, right, top, bottom = 70, WIDTH - 20, 20, HEIGHT - 36
    good = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(good), max(good)) if good else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - (abs(lo) * 0.05 or 0.5), hi + (abs(hi) * 0.05 or 0.5)
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    n = max(1, len(values))

    def px(i: int) -> int:
        return left + round((right - left) * (i / (n - 1) if n > 1 else 0.5))

    def py(v: float) -> int:
        return bottom - round((bottom - top) * (v - lo) / (hi - lo))

    for t in _ticks(lo, hi):
        y = py(t)
        c.line(left, y, right, y, GRID)
        label = _label(t)
        c.text(left - 8 - c.text_width(label), y - 5, label)
    for t in _ticks(0, n - 1, min(10, max(1, n - 1))):
        if abs(t - round(t)) < 1e-9:
            x = px(int(round(t)))
            c.line(x, bottom, x, bottom + 4, AXIS)
            label = str(int(round(t)))
            c.text(x - c.text_width(label) // 2, bottom + 10, label)
    c.line(left, top, left, bottom, AXIS)
    c.line(left, bottom, right, bottom, AXIS)
    best = best_so_far(values, direction)
    prev = None
    for i, b in enumerate(best):
        if b is None:
            continue
        point = (px(i), py(b))
        if prev is not None:
            c.line(prev[0], prev[1], point[0], prev[1], BEST, 2)  # a step: along, then to the new best
            c.line(point[0], prev[1], point[0], point[1], BEST, 2)
        prev = point
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            c.rect(px(i) - 1, bottom - 6, px(i) + 1, bottom - 1, FAILED)
        else:
            c.rect(px(i) - 2, py(v) - 2, px(i) + 2, py(v) + 2, POINT)
    return c.png()
