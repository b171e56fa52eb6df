"""`python -m orchestrator data synth|index|faces`: prepare a dataset by hand.

The same steps a grid's preparation job runs, for inspecting or pre-building a dataset.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("synth", help="write a synthetic twin in the dataset's raw layout")
    p.add_argument("--dataset", required=True, choices=["ckplus", "oulu"])
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"))
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("index", help="index a raw tree (with folds) into a Parquet file")
    p.add_argument("--dataset", required=True, choices=["ckplus", "oulu", "manifest"])
    p.add_argument("--root", required=True)
    p.add_argument("--manifest", help="CSV path,subject,label (for --dataset manifest)")
    p.add_argument("--out", required=True)
    p.add_argument("--n-folds", type=int, default=10)

    p = sub.add_parser("faces", help="build or reuse the MTCNN face-crop cache")
    p.add_argument("--dataset", required=True, choices=["ckplus", "oulu", "manifest"])
    p.add_argument("--root", required=True)
    p.add_argument("--manifest")
    p.add_argument("--out", help="cache folder (default: ROOT-faces-SIZE, beside the root)")
    p.add_argument("--crop-size", type=int, default=299)
    p.add_argument("--detector", choices=["mtcnn", "center"], default="mtcnn")
    p.add_argument("--n-folds", type=int, default=10)


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
    print(
        f"faces: {report.detected} detected, {report.fallback} fell back to a centre crop, "
        f"{report.reused} reused -> {out}"
    )
    return 0
