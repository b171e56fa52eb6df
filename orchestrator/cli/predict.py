"""`python -m orchestrator predict`: a run's trained model on your own images.

    python -m orchestrator predict --run-dir R [--dataset D --backbone B --strategy S
        --seed N --selection inner|heldout --point LABEL] [--fold K | --ensemble]
        IMAGES_OR_FOLDERS... [--out FILE.csv|.parquet]

The model is picked from the run's finished units by dataset, backbone, strategy (the chain,
e.g. `ce>focal`), seed, selection protocol and sweep point: one configuration. A choice that
leaves several is an error listing them with the options that pick each, never an average
of different configurations. A model is trained once per test fold: `--fold K` uses fold K's,
`--ensemble` averages the folds' of that one configuration. The tensor work is
`fer_core.inference.predict`'s; this module picks units and writes rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_core.errors import FerError

SELECTORS = ("dataset", "backbone", "strategy", "seed", "selection")


@dataclass(frozen=True)
class Choice:
    """A finished training unit of the run, with what selects it."""

    unit_id: str
    dataset: str
    backbone: str
    strategy: str
    seed: int
    selection: str
    points: tuple[str, ...]  # the sweep points the unit serves (Unit.points); () without
    fold: int
    work_dir: Path

    def model(self) -> str:
        """The options that pick this unit's configuration (a unit serving several sweep
        points is one configuration: any of its points picks it)."""
        options = (
            f"--dataset {self.dataset} --backbone {self.backbone} "
            f"--strategy {shlex.quote(self.strategy)} --seed {self.seed} "
            f"--selection {self.selection}"
        )
        return options + (f" --point {shlex.quote(self.points[0])}" if self.points else "")


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that pick a model of a run (shared with `export`)."""
    p.add_argument("--run-dir", required=True, help="the run directory of a launched grid")
    p.add_argument("--dataset", help="the dataset the model was trained on")
    p.add_argument("--backbone")
    p.add_argument("--strategy", help="the strategy chain, e.g. ce>focal (its last stage)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--selection", choices=["heldout", "inner"], help="the selection protocol (tune runs)"
    )
    p.add_argument("--point", help="the sweep point, e.g. train.lr=0.02 (as dag.json names it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, help="the model trained with test fold K")
    which.add_argument("--ensemble", action="store_true", help="average every fold's model")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_selection_arguments(p)
    p.add_argument(
        "inputs", nargs="+", metavar="IMAGES_OR_FOLDERS", help="images, videos (a row per frame)"
    )
    p.add_argument("--out", help="write the rows to FILE.csv or FILE.parquet (default: print)")
    p.add_argument(
        "--fallback-center",
        action="store_true",
        help="score the centre square of images with no face (as the training cache does)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, default=32)


def select_units(args: argparse.Namespace) -> list[Choice]:
    """The finished units of the model the arguments pick, one per fold used."""
    from orchestrator.run.rundir import RunDir

    rundir = RunDir(Path(args.run_dir))
    rundir.info()
    done = rundir.store.done_ids("train")
    choices = [
        Choice(
            unit_id=u.id,
            dataset=u.dataset,
            backbone=u.backbone,
            strategy=u.strategy,
            seed=int(u.spec["config"].get("seed", 0)),
            selection=str(u.spec["config"].get("selection", "heldout")),
            points=u.points,
            fold=u.fold,
            work_dir=rundir.work_dir(u.id),
        )
        for u in rundir.read_dag()
        if u.kind == "train" and u.id in done
    ]
    if not choices:
        raise FerError(f"{rundir.path}: no finished training unit yet; launch the grid first")
    for key in SELECTORS:
        wanted = getattr(args, key)
        if wanted is not None:
            choices = [c for c in choices if getattr(c, key) == wanted]
            if not choices:
                raise FerError(f"--{key} {wanted}: no finished unit of {rundir.path} has it")
    if args.point is not None:
        choices = [c for c in choices if args.point in c.points]
        if not choices:
            raise FerError(f"--point {args.point}: no finished unit of {rundir.path} serves it")
    models = sorted({c.model() for c in choices})
    if len(models) > 1:
        raise FerError(
            f"{len(models)} configurations match in {rundir.path}; pick one: " + "; ".join(models)
        )
    folds = sorted(c.fold for c in choices)
    twice = sorted({f for f in folds if folds.count(f) > 1})
    if twice:  # one configuration trains each fold once: two units would be averaged
        raise FerError(
            f"fold {twice[0]} has {folds.count(twice[0])} finished units for {models[0]} in "
            f"{rundir.path}: their settings differ in something these options do not pick"
        )
    if args.fold is not None:
        choices = [c for c in choices if c.fold == args.fold]
        if not choices:
            raise FerError(f"--fold {args.fold}: not among the finished folds {folds}")
    elif not args.ensemble and len(choices) > 1:
        raise FerError(f"the model was trained on folds {folds}: pass --fold K or --ensemble")
    return sorted(choices, key=lambda c: c.fold)


def run(args: argparse.Namespace) -> int:
    from fer_core.inference.predict import CROP_NOTES, input_files, load_units, predict_files

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise FerError(f"--out {out}: give a .csv or .parquet file name")
    if args.batch_size < 1:
        raise FerError(f"--batch-size {args.batch_size}: must be >= 1")
    choices = select_units(args)
    files = input_files(args.inputs)
    units = load_units([c.work_dir for c in choices], args.device)
    note = CROP_NOTES.get(units[0].card["crop"]["detector"] or "")
    if note:
        print(f"predict: {note}", file=sys.stderr)
    started = time.monotonic()

    def progress(done: int, total: int | None) -> None:
        if total is None or total > 64:  # a handful of images needs no progress lines
            of = "" if total is None else f"/{total}"
            elapsed = time.monotonic() - started
            print(f"predict: {done}{of} pictures, {elapsed:.1f}s", file=sys.stderr, flush=True)

    rows = predict_files(files, units, args.fallback_center, args.batch_size, progress)
    if out is None:
        print(_table(rows))
    else:
        _write(rows, out)
        print(f"{len(rows)} rows -> {out}")
    missing = sum(1 for r in rows if r["face"] == "none")
    if missing:
        print(
            f"{missing} of {len(rows)} images: no face found, not scored "
            "(--fallback-center scores their centre square)",
            file=sys.stderr,
        )
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    from orchestrator.texttable import text_table

    headers = list(rows[0])
    return text_table(headers, [[r[h] for h in headers] for r in rows])


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    import io

    import pyarrow as pa

    from fer_core.io import atomic_write_bytes

    table = pa.Table.from_pylist(rows)
    buffer = io.BytesIO()
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buffer)
    else:
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buffer)
    atomic_write_bytes(out, buffer.getvalue())
