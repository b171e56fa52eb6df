"""Other methods' published numbers on the in-the-wild benchmarks, set beside ours.

The counterpart of `paper_numbers` for datasets the 2019 paper did not use. These are other
methods (their own networks, pre-training and protocols), shown for orientation with their
source, never entered into this report's statistics. The same figures are in
docs/METHOD.md section 8.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    """One published figure: overall test accuracy (%) of `method` on `benchmark`."""

    method: str
    benchmark: str  # RAF-DB, AffectNet-7, AffectNet-8
    accuracy: float
    source: str


POSTER_V2 = "POSTER++ (Mao et al., 2023), the authors' repository, github.com/Talented-Q/POSTER_V2"
DAN = "DAN (Wen et al., 2023), the authors' repository, github.com/yaoing/DAN"

PUBLISHED: tuple[Published, ...] = (
    Published("POSTER++", "RAF-DB", 92.21, POSTER_V2),
    Published("DAN", "RAF-DB", 89.70, DAN),
    Published("POSTER++", "AffectNet-7", 67.49, POSTER_V2),
    Published("DAN", "AffectNet-7", 65.69, DAN),
    Published("POSTER++", "AffectNet-8", 63.77, POSTER_V2),
    Published("DAN", "AffectNet-8", 62.09, DAN),
)


def benchmark_of(kind: str, n_classes: int) -> str | None:
    """The benchmark a dataset of this kind and class count is (AffectNet's 7- and 8-class
    variants differ by contempt), or None for one without published numbers here."""
    if kind == "rafdb":
        return "RAF-DB"
    if kind.startswith("affectnet") and n_classes in (7, 8):
        return f"AffectNet-{n_classes}"
    return None


def published(benchmark: str) -> list[Published]:
    return [p for p in PUBLISHED if p.benchmark == benchmark]
