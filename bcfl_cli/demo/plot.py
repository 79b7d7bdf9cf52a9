"""The accuracy curve as text, for the terminal (the PNG is drawn by ``demo/chart.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
