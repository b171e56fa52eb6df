"""Which crops of a dataset train a unit, which select its best epoch, and which are scored.

Two protocols (docs/METHOD.md D-11, D-18):
- `kfold`: subject-independent folds (CK+, Oulu-CASIA, a manifest without a split). The test
  fold is scored; `heldout` selects on the test fold itself (the paper's protocol), `inner`
  on the next fold of the training folds.
- `fixed`: the dataset's own train / val / test split (each crop's `split`). The test split is
  only ever scored. Selection uses the val split, or, where the dataset has none (RAF-DB;
  AffectNet, whose official validation set is everyone's test set), a stratified hold-out of
  the training split, drawn with its own seed so that every unit and seed of a study selects
  on the same images. `heldout` has no meaning here: the grid refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fer_core.data.folds import inner_validation_fold
from fer_core.errors import FerError


@dataclass(frozen=True)
class Holdout:
    """A stratified hold-out of a fixed split's training images, for model selection."""

    fraction: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class Roles:
    """Bool masks over a dataset's crops (disjoint, except `heldout`'s select = test)."""

    train: torch.Tensor
    select: torch.Tensor
    test: torch.Tensor


def kfold_roles(folds: torch.Tensor, fold: int, n_folds: int, selection: str) -> Roles:
    """Test fold `fold`; `heldout` selects on it, `inner` on the next fold (trained on none)."""
    if fold < 1:
        raise FerError(f"fold {fold}: a k-fold unit needs a test fold in 1..{n_folds}")
    test = folds == fold
    if selection == "inner":
        select = folds == inner_validation_fold(fold, n_folds)
        return Roles(~test & ~select, select, test)
    return Roles(~test, test, test)


def fixed_roles(
    splits: Sequence[str], labels: torch.Tensor, selection: str, holdout: Holdout
) -> Roles:
    """Train / select / test of a fixed split (see the module docstring)."""
    if selection == "heldout":
        raise FerError(
            "selection: heldout would pick epochs on the test split of a fixed split; use "
            "selection: inner (its val split, or a hold-out of its training split)"
        )
    names = np.asarray(splits)
    test = torch.from_numpy(names == "test")
    train = names == "train"
    if (names == "val").any():
        select = names == "val"
    else:
        select = stratified_holdout(labels.numpy(), np.flatnonzero(train), holdout)
        train &= ~select
    return Roles(torch.from_numpy(train), torch.from_numpy(select), test)


def stratified_holdout(labels: np.ndarray, candidates: np.ndarray, holdout: Holdout) -> np.ndarray:
    """A bool mask over `labels` picking round(fraction × n) of each class's `candidates`
    (at least one of a class with two or more, never all of it), drawn with `holdout.seed`:
    the class proportions of the training split, and the same images for every unit."""
    rng = np.random.default_rng(holdout.seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels[candidates]):
        members = candidates[labels[candidates] == label]
        if len(members) < 2:
            continue
        take = min(max(1, round(holdout.fraction * len(members))), len(members) - 1)
        mask[rng.permutation(members)[:take]] = True
    return mask
