"""The accuracy curve as text (for the terminal) and as a PNG, with no plotting dependency.

A PNG is a signature, an IHDR chunk, zlib-compressed scanlines and an IEND chunk (RFC 2083);
one line chart with a grid and tick labels needs nothing more than that and a 5x7 pixel font,
which is far lighter than adding matplotlib (tens of MB) to every member's install.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Point = tuple[int, float]  # (round, accuracy in [0, 1])


# --- text -----------------------------------------------------------------------------------
def text_plot(points: Sequence[Point], *, width: int = 50) -> list[str]:
    """Rows of a character plot: y is accuracy (auto-ranged to tenths), x is the round."""
    if not points:
        return ["(no rounds scored)"]
    lo, hi = _y_range([p[1] for p in points])
    tenths = max(1, round((hi - lo) * 10))
    per = 2 if tenths <= 5 else 1  # rows per tenth of accuracy
    height = tenths * per + 1
    last_round = max(p[0] for p in points) or 1
    grid = [[" "] * width for _ in range(height)]
    for number, value in points:
        x = round(number / last_round * (width - 1))
        y = round((value - lo) / (hi - lo) * (height - 1))
        grid[height - 1 - y][x] = "●"
    rows = []
    for i, row in enumerate(grid):
        level = hi - (hi - lo) * i / (height - 1)
        label = f"{level:5.1f} ┤" if i % per == 0 else "      │"
        rows.append(label + "".join(row).rstrip())
    rows.append("      └" + "─" * width)
    ticks = [" "] * (width + 8)
    for number in _round_ticks(last_round):
        text = str(number)
        x = 7 + round(number / last_round * (width - 1))
        for j, ch in enumerate(text):
            if x + j < len(ticks):
                ticks[x + j] = ch
    rows.append("".join(ticks).rstrip() + "   round")
    return rows


def _y_range(values: Sequence[float]) -> tuple[float, float]:
    lo = math.floor(min(values) * 10) / 10
    hi = math.ceil(max(values) * 10) / 10
    if hi - lo < 0.1:
        hi = min(1.0, lo + 0.1) if lo + 0.1 <= 1.0 else hi
        lo = hi - 0.1
    return lo, hi


def _round_ticks(last: int) -> list[int]:
    step = max(1, math.ceil(last / 5))
    ticks = list(range(0, last + 1, step))
    if ticks[-1] != last:
        ticks.append(last)
    return ticks


# --- PNG --------------------------------------------------------------------------------------
_FONT = {
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "3": ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    "4": ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "6": ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    "7": ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    "8": ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    "9": ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
    ".": ["00000", "00000", "00000", "00000", "00000", "01100", "01100"],
    " ": ["00000"] * 7,
    "a": ["00000", "00000", "01110", "00001", "01111", "10001", "01111"],
    "c": ["00000", "00000", "01110", "10000", "10000", "10001", "01110"],
    "d": ["00001", "00001", "01101", "10011", "10001", "10001", "01111"],
    "e": ["00000", "00000", "01110", "10001", "11111", "10000", "01110"],
    "n": ["00000", "00000", "10110", "11001", "10001", "10001", "10001"],
    "o": ["00000", "00000", "01110", "10001", "10001", "10001", "01110"],
    "p": ["00000", "00000", "11110", "10001", "11110", "10000", "10000"],
    "r": ["00000", "00000", "10110", "11001", "10000", "10000", "10000"],
    "s": ["00000", "00000", "01110", "10000", "01110", "00001", "11110"],
    "t": ["01000", "01000", "11100", "01000", "01000", "01001", "00110"],
    "u": ["00000", "00000", "10001", "10001", "10001", "10011", "01101"],
    "y": ["00000", "00000", "10001", "10001", "01111", "00001", "01110"],
}

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
GRID: RGB = (225, 225, 225)
AXIS: RGB = (60, 60, 60)
LINE: RGB = (31, 119, 180)
TEXT: RGB = (40, 40, 40)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def set(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        for y in range(min(y0, y1), max(y0, y1) + 1):
            for x in range(min(x0, x1), max(x0, x1) + 1):
                self.set(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB, thick: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            x = round(x0 + (x1 - x0) * i / steps)
            y = round(y0 + (y1 - y0) * i / steps)
            self.rect(x - thick // 2, y - thick // 2, x + thick // 2, y + thick // 2, color)

    def text(self, x: int, y: int, text: str, color: RGB, scale: int = 2) -> None:
        for ch in text:
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "1":
                        self.rect(
                            x + col * scale,
                            y + row * scale,
                            x + col * scale + scale - 1,
                            y + row * scale + scale - 1,
                            color,
                        )
            x += 6 * scale

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[3 * self.width * y : 3 * self.width * (y + 1)])
            for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 6 * scale


def png_bytes(
    points: Sequence[Point], *, width: int = 640, height: int = 400, title: str = ""
) -> bytes:
    """The accuracy curve as PNG bytes (grid every tenth of accuracy, ticks every few rounds)."""
    canvas = _Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 40, height - 50
    values = [p[1] for p in points] or [0.0, 1.0]
    lo, hi = _y_range(values)
    last = max((p[0] for p in points), default=1) or 1

    def px(number: int, value: float) -> tuple[int, int]:
        x = left + round(number / last * (right - left))
        y = bottom - round((value - lo) / (hi - lo) * (bottom - top))
        return x, y

    tenths = round((hi - lo) * 10)
    for i in range(tenths + 1):
        level = lo + i / 10
        _, y = px(0, level)
        canvas.line(left, y, right, y, GRID)
        label = f"{level:.1f}"
        canvas.text(left - 8 - text_width(label), y - 7, label, TEXT)
    for number in _round_ticks(last):
        x, _ = px(number, lo)
        canvas.line(x, top, x, bottom, GRID)
        label = str(number)
        canvas.text(x - text_width(label) // 2, bottom + 8, label, TEXT)
    canvas.line(left, top, left, bottom, AXIS, 2)
    canvas.line(left, bottom, right, bottom, AXIS, 2)
    canvas.text((left + right - text_width("round")) // 2, height - 22, "round", TEXT)
    if title:
        canvas.text((width - text_width(title)) // 2, 10, title.lower(), TEXT)
    previous = None
    for number, value in points:
        here = px(number, value)
        if previous is not None:
            canvas.line(*previous, *here, LINE, 3)
        canvas.rect(here[0] - 3, here[1] - 3, here[0] + 3, here[1] + 3, LINE)
        previous = here
    return canvas.png()


def write_png(points: Sequence[Point], path: Path, *, title: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(points, title=title))
    return path
