"""Tiny table renderers (aligned terminal text and Markdown), so output needs no extra package,
and `quantity`, the count-and-noun of table captions and titles.

Cells are rendered with `cell_text`; numbers are right-aligned, everything else left-aligned,
which keeps decimal columns readable in a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_CELL = 60


def quantity(n: int, noun: str) -> str:
    """`1 fold`, `2 folds`: a count with its noun in the right number (regular plurals)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def cell_text(value: Any, max_width: int | None = MAX_CELL) -> str:
    """One cell as text: NULL for missing values, floats to 6 significant digits."""
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = "NaN" if math.isnan(value) else f"{value:.6g}"
    else:
        text = str(value)
    text = text.replace("\n", " ")
    if max_width is not None and len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _right_aligned(rows: Sequence[Sequence[Any]], column: int) -> bool:
    values = [row[column] for row in rows if row[column] is not None]
    return bool(values) and all(_is_number(v) for v in values)


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    right: Sequence[bool] | None = None,
    max_width: int | None = MAX_CELL,
) -> str:
    """An aligned plain-text table with a rule under the header.

    `right[i]` forces column i's alignment; by default numeric columns are right-aligned.
    """
    if right is None:
        right = [_right_aligned(rows, i) for i in range(len(headers))]
    cells = [[cell_text(v, max_width) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    if right is None:
        right = [_right_aligned(rows, i) for i in range(len(headers))]

    def esc(value: Any) -> str:
        return cell_text(value, max_width=None).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    out.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
    out.extend("| " + " | ".join(esc(v) for v in row) + " |" for row in rows)
    return "\n".join(out)
