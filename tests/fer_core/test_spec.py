"""The prepare spec: the contract between the plan and the worker's `prepare`, read back from
a unit's spec.json by `from_dict`, which names an unknown or missing key."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from fer_core.errors import FerError
from fer_core.spec import PrepareSpec

SPEC = PrepareSpec(
    dataset="ckplus",
    name="ckplus",
    root="/data/ck",
    manifest=None,
    synthetic=True,
    image_size=[96, 64],
    crop_size=64,
    detector="center",
    n_folds=10,
    out_dir="/runs/demo/data/ckplus/0123456789abcdef",
)


def test_the_json_form_reads_back_as_the_same_spec_in_field_order():
    text = json.dumps(asdict(SPEC))
    assert PrepareSpec.from_dict(json.loads(text)) == SPEC
    assert list(json.loads(text)) == [
        "dataset",
        "name",
        "root",
        "manifest",
        "synthetic",
        "image_size",
        "crop_size",
        "detector",
        "n_folds",
        "fold_rule",
        "out_dir",
        "options",
        "scale",
    ]


def test_a_spec_written_before_fold_rule_reads_back_as_interleaved():
    older = {k: v for k, v in asdict(SPEC).items() if k != "fold_rule"}
    assert PrepareSpec.from_dict(older).fold_rule == "interleaved"


def test_an_unknown_key_is_refused_naming_it():
    with pytest.raises(FerError, match="prepare spec: unknown key 'colour'"):
        PrepareSpec.from_dict({**asdict(SPEC), "colour": "red"})


def test_a_missing_key_is_refused_naming_it():
    body = asdict(SPEC)
    del body["out_dir"]
    with pytest.raises(FerError, match="prepare spec: missing key 'out_dir'"):
        PrepareSpec.from_dict(body)
