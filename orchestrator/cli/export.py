"""`python -m orchestrator export --run-dir R [selection] --format torchscript|onnx --out DIR`.

Writes a model that takes a face crop and returns class probabilities, with `model.json`
beside it (classes, crop and normalisation, the input's dtype/layout/size/range), after
checking it against the PyTorch model (`fer_core.inference.export`). The model is picked as
for `predict` (one configuration, or an error listing them); `--ensemble` exports one model
averaging the folds of that configuration.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from orchestrator.cli.predict import add_selection_arguments

    add_selection_arguments(p)
    p.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    p.add_argument("--out", required=True, help="the folder to write model.* and model.json to")


def run(args: argparse.Namespace) -> int:
    from fer_core.inference.export import export_units
    from fer_core.inference.predict import load_units
    from orchestrator.cli.predict import select_units

    choices = select_units(args)
    units = load_units([c.work_dir for c in choices], "cpu")
    description = export_units(
        [u.model for u in units], [u.card for u in units], args.format, Path(args.out)
    )
    print(
        f"{args.format}: {Path(args.out) / description['file']} (+ model.json); largest "
        f"|difference| from the PyTorch model on {description['parity_samples']} sample "
        f"inputs: {description['parity_max_abs_diff']:.3g}"
    )
    return 0
