"""The roles of a dataset's crops under the kfold and fixed protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_core.data.protocol import Holdout, fixed_roles, kfold_roles, stratified_holdout
from fer_core.errors import FerError

# 100 training images (class 0: 80, class 1: 15, class 2: 5) and 20 test images.
LABELS = torch.tensor([0] * 80 + [1] * 15 + [2] * 5 + [0, 1] * 10)
SPLITS = ["train"] * 100 + ["test"] * 20


def test_without_a_val_split_a_stratified_hold_out_of_train_selects():
    roles = fixed_roles(SPLITS, LABELS, "inner", Holdout(0.2, 7))
    select = roles.select.numpy()
    assert np.bincount(LABELS.numpy()[select], minlength=3).tolist() == [16, 3, 1]
    assert not (roles.select & roles.train).any() and not (roles.select & roles.test).any()
    assert int(roles.train.sum()) == 80 and int(roles.test.sum()) == 20
    assert not (roles.train & roles.test).any()


def test_the_hold_out_depends_on_its_seed_only():
    a = fixed_roles(SPLITS, LABELS, "inner", Holdout(0.2, 7)).select
    assert torch.equal(a, fixed_roles(SPLITS, LABELS, "inner", Holdout(0.2, 7)).select)
    assert not torch.equal(a, fixed_roles(SPLITS, LABELS, "inner", Holdout(0.2, 8)).select)


def test_the_hold_out_never_takes_a_whole_class_and_keeps_singletons_in_train():
    labels = np.array([0, 0, 1, 2, 2, 2])
    mask = stratified_holdout(labels, np.arange(6), Holdout(0.9, 0))
    assert np.bincount(labels[mask], minlength=3).tolist() == [1, 0, 2]


def test_a_val_split_selects_when_there_is_one():
    splits = ["train"] * 90 + ["val"] * 10 + ["test"] * 20
    roles = fixed_roles(splits, LABELS, "inner", Holdout())
    assert roles.select.nonzero().flatten().tolist() == list(range(90, 100))
    assert int(roles.train.sum()) == 90


def test_heldout_selection_on_a_fixed_split_is_refused():
    with pytest.raises(FerError, match="heldout would pick epochs on the test split"):
        fixed_roles(SPLITS, LABELS, "heldout", Holdout())


def test_kfold_roles_keep_the_paper_and_inner_protocols():
    folds = torch.tensor([1, 2, 3, 1, 2, 3])
    heldout = kfold_roles(folds, 1, 3, "heldout")
    assert torch.equal(heldout.select, heldout.test)
    inner = kfold_roles(folds, 1, 3, "inner")
    assert inner.select.tolist() == [False, True, False, False, True, False]
    assert inner.train.tolist() == [False, False, True, False, False, True]
