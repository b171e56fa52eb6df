"""A dataset's identity: what its training units use, not where or when its files were written.

The identity is `index.dataset_fingerprint` of the dataset's index: the labelled frames it
keeps, their subjects, labels, folds and splits, and each used image's content (the sha256
of its file; a FER2013 face's pixels; an AffectNet image's bytes and face box). A `touch`, a copy
to another disk (with or without times), or files the tool itself writes beside the images
(face caches, indexes) leave it unchanged; a changed label, pixel, fold count or manifest row
changes it. Image digests come from a `DigestCache`, so an unchanged tree costs one `stat`
per image instead of a read (bench/identity.py measures both).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fer_core.data.folds import FOLD_RULES
from fer_core.data.index import build_index, check_image, dataset_fingerprint
from fer_core.digest_cache import DigestCache
from fer_core.errors import FerError


def dataset_identity(
    dataset: str,
    root: str | Path,
    manifest: str | Path | None,
    n_folds: int,
    digests: DigestCache,
    fold_rule: str = FOLD_RULES[0],
    options: Mapping[str, str] | None = None,
) -> str:
    """The content identity (sha256 hex) of a raw dataset tree as its units would use it.

    Every image whose digest is computed afresh is also decoded (`index.check_image`), so a
    truncated frame is one error naming it before anything is submitted, not a failed
    preparation job; an image the cache already vouches for is neither read nor decoded.
    One that cannot be read is a FerError naming it.
    """
    index = build_index(
        dataset,
        root,
        manifest=manifest,
        n_folds=n_folds,
        verify=False,
        fold_rule=fold_rule,
        options=options,
    )

    def file_digest(path: Path) -> str:
        try:
            return digests.sha256(path, check=check_image)
        except OSError as exc:
            raise FerError(f"{path}: cannot be read ({exc.strerror}); fix or remove it") from None

    return dataset_fingerprint(index, file_digest)
