"""Datasets for the library: raw layouts -> index with folds -> cached face crops -> batches.

Modules: `folds` (subject-independent folds), `index` (dataset adapters, Parquet index,
fingerprint), `ckplus`/`oulu`/`manifest` (k-fold layouts), `rafdb`/`fer2013`/`affectnet`
(fixed-split datasets' list files, `listing`) and `wild` (their options and how each gives
a face), `synthetic` (twins of all of them), `faces` (crops, cached), `augment` (batched GPU
augmentation). Kept import-light: torch and facenet load only in `faces` and
`augment`, so scanning a dataset does not pay for them.
"""
