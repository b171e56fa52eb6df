"""`python -m orchestrator data synth|index|faces`: prepare a dataset by hand.

The same steps a grid's preparation job runs, for inspecting or pre-building a dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("ckplus", "oulu", "manifest", "rafdb", "fer2013", "ferplus", "affectnet")
TWINS = ("ckplus", "oulu", "rafdb", "fer2013", "ferplus", "affectnet")
FIXED = TWINS[2:]  # their twins have a scale, not a frame size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="STEP")

    def step(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary)

    p = step(
        "synth",
        "write a synthetic twin of CK+ (the real roster and class imbalance), Oulu-CASIA, "
        "RAF-DB, FER2013, FERPlus or AffectNet (the real split sizes and class counts at "
        "scale 1) in the dataset's distributed format, faces drawn procedurally",
    )
    p.add_argument("--dataset", required=True, choices=TWINS, help="which twin")
    p.add_argument("--out", required=True, help="folder to write the raw tree into")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="frame size in pixels (default: ckplus 640 490, oulu 320 240; ckplus/oulu only)",
    )
    p.add_argument(
        "--scale",
        type=float,
        help="rafdb/fer2013/ferplus/affectnet: fraction of the real split sizes, every class "
        "kept (default 1: the real sizes)",
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
        choices=["mtcnn", "center", "box"],
        help="mtcnn: detect the face; center: the centre square of every frame, no detection "
        "(the whole image of RAF-DB aligned and FER2013); box: the dataset's face boxes "
        "(AffectNet); default: the kind's (box for affectnet, center where the image is the "
        "face already, else mtcnn)",
    )
    p.add_argument("--n-folds", type=int, default=10, help="subject-independent folds")


def run(args: argparse.Namespace) -> int:
    from fer_core.data.index import build_index
    from fer_core.data.synthetic import twins as synth
    from fer_core.data.wild import check_detector, default_detector, resolve_options
    from fer_core.errors import FerError

    if args.data_command == "synth":
        kwargs = {"seed": args.seed}
        out = Path(args.out)
        fixed = args.dataset in FIXED
        if (fixed and args.image_size) or (not fixed and args.scale is not None):
            raise FerError(
                f"--dataset {args.dataset}: {'--image-size' if fixed else '--scale'} is a "
                f"{'ckplus/oulu' if fixed else 'fixed-split'} twin's option"
            )
        if args.image_size:
            kwargs["image_size"] = tuple(args.image_size)
        if args.dataset in FIXED:
            from fer_core.data.synthetic.wild import write_wild_twin

            scale = 1.0 if args.scale is None else args.scale
            write_wild_twin(args.dataset, out, scale, args.seed)
        elif args.dataset == "ckplus":
            synth.write_ckplus_twin(out, synth.DEFAULT_ROSTER, **kwargs)
        else:
            synth.write_oulu_twin(out, **kwargs)
        print(f"wrote a synthetic {args.dataset} twin to {out}")
        return 0
    given = {k: v for k in ("images", "label_mode", "classes") if (v := getattr(args, k))}
    options = resolve_options(args.dataset, given, f"--dataset {args.dataset}")
    index = build_index(
        args.dataset, Path(args.root), manifest=args.manifest, n_folds=args.n_folds, options=options
    )
    if args.data_command == "index":
        index.write(Path(args.out))
        if index.records and index.records[0].split:
            splits = {s: sum(r.split == s for r in index.records) for s in ("train", "val", "test")}
            shape = ", ".join(f"{n} {s}" for s, n in splits.items() if n)
        else:
            shape = f"{len({r.subject for r in index.records})} subjects"
        print(f"{len(index.records)} images ({shape}), {len(index.classes)} classes -> {args.out}")
        if index.skipped:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(index.skipped.items()))
            print(f"dropped rows (not an expression, or not a class of this variant): {counts}")
        return 0
    from fer_core.data.faces import default_faces_dir, prepare_faces

    out = Path(args.out) if args.out else default_faces_dir(Path(args.root), args.crop_size)
    detector = args.detector or default_detector(args.dataset, options)
    check_detector(args.dataset, detector, "--detector")
    report = prepare_faces(index, out, args.crop_size, detector=detector)
    if detector == "box":
        made = f"{report.total} crops of the dataset's face boxes (detector: box)"
    elif detector == "center":
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
    p.add_argument("--dataset", required=True, choices=KINDS, help="raw layout")
    p.add_argument("--root", required=True, help="the dataset's raw root folder")
    p.add_argument(
        "--manifest",
        help="CSV path,subject,label for --dataset manifest, relative to ROOT unless absolute "
        "(default: ROOT/manifest.csv)",
    )
    p.add_argument("--images", help="rafdb: aligned (default) or original")
    p.add_argument("--label-mode", help="ferplus: majority (default) or probability")
    p.add_argument("--classes", help="affectnet: 8 (default) or 7 (without contempt)")
