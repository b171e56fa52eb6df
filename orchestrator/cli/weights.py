"""`python -m orchestrator weights import vgg_face FILE`: make a backbone's pre-trained file.

The converted file goes where `weights: pretrained` looks for it (the local torch cache), so a
grid that names the backbone finds it at launch.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", required=True)
    p = sub.add_parser("import", help="convert published weights into the local cache")
    p.add_argument("backbone", choices=["vgg_face"])
    p.add_argument("file", help="the MatConvNet vgg_face.mat")
    p.add_argument("--out", help="write here instead of the cache path")


def run(args: argparse.Namespace) -> int:
    from fer_core.models.vgg_face_import import import_vgg_face

    summary = import_vgg_face(args.file, args.out)
    print(
        f"vgg_face: {summary['tensors']} tensors, {summary['parameters']:,} parameters, "
        f"{summary['classes']} identity classes (ignored by training) -> {summary['path']}"
    )
    return 0
