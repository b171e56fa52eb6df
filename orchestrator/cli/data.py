"""`python -m orchestrator data synth|index|faces`: prepare a dataset by hand.

The same steps a grid's preparation job runs, for inspecting or pre-building a dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="STEP")

    def step(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary)

    p = step(
        "synth",
        "write a synthetic twin of CK+ (the real roster and class imbalance) or Oulu-CASIA in "
        "the dataset's raw layout, faces drawn procedurally",
    )
    p.add_argument("--dataset", required=True, choices=["ckplus", "oulu"], help="which twin")
    p.add_argument("--out", required=True, help="folder to write the raw tree into")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="frame size in pixels (default: ckplus 640 490, oulu 320 240)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the drawing")

    p = step(
        "index",
        "scan a raw tree (CK+, Oulu-CASIA or a CSV manifest) into a Parquet index: one row per "
        "kept frame with subject, label and subject-independent fold; every image is opened "
        "once to catch truncated files",
    )
    _raw_tree_args(p)
    p.add_argument("--out", required=True, help="the Parquet file to write")
    p.add_argument("--n-folds", type=int, default=10, help="subject-independent folds")

    p = step(
        "faces",
        "crop one face per indexed frame into a cache (faces.pt + faces.json), reused when "
        "the images and settings are unchanged; a frame without a detected face falls back to "
        "a centre crop and is counted",
    )
    _raw_tree_args(p)
    p.add_argument("--out", help="cache folder (default: ROOT-faces-SIZE, beside the root)")
    p.add_argument("--crop-size", type=int, default=299, help="side of the square crops, pixels")
    p.add_argument(
        "--detector",
        choices=["mtcnn", "center"],
        default="mtcnn",
        help="mtcnn: detect the face; center: the centre square of every frame, no detection",
    )
    p.add_argument("--n-folds", type=int, default=10, help="subject-independent folds")


def run(args: argparse.Namespace) -> int:
    from fer_core.data.index import build_index
    from fer_core.data.synthetic import twins as synth

    if args.data_command == "synth":
        kwargs = {"seed": args.seed}
        if args.image_size:
            kwargs["image_size"] = tuple(args.image_size)
        out = Path(args.out)
        if args.dataset == "ckplus":
            synth.write_ckplus_twin(out, synth.DEFAULT_ROSTER, **kwargs)
        else:
            synth.write_oulu_twin(out, **kwargs)
        print(f"wrote a synthetic {args.dataset} twin to {out}")
        return 0
    index = build_index(args.dataset, Path(args.root), manifest=args.manifest, n_folds=args.n_folds)
    if args.data_command == "index":
        index.write(Path(args.out))
        subjects = len({r.subject for r in index.records})
        print(
            f"{len(index.records)} images, {subjects} subjects, {len(index.classes)} classes "
            f"-> {args.out}"
        )
        return 0
    from fer_core.data.faces import default_faces_dir, prepare_faces

    out = Path(args.out) if args.out else default_faces_dir(Path(args.root), args.crop_size)
    report = prepare_faces(index, out, args.crop_size, detector=args.detector)
    if args.detector == "center":
        made = f"{report.total} centre crops (detector: center, nothing detected)"
    else:
        made = (
            f"{report.total} crops: {report.detected} faces detected, {report.fallback} fell "
            "back to a centre crop"
        )
    reused = ", all reused from the cache" if report.reused else ""
    print(f"faces: {made}{reused} -> {out}")
    return 0


def _raw_tree_args(p: argparse.ArgumentParser) -> None:
    """The options naming a raw dataset tree (`index` and `faces` read one)."""
    p.add_argument(
        "--dataset", required=True, choices=["ckplus", "oulu", "manifest"], help="raw layout"
    )
    p.add_argument("--root", required=True, help="the dataset's raw root folder")
    p.add_argument(
        "--manifest",
        help="CSV path,subject,label for --dataset manifest, relative to ROOT unless absolute "
        "(default: ROOT/manifest.csv)",
    )
