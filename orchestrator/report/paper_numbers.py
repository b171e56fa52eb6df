"""The paper's published numbers (Gan, Zou & Zhang, ICANN 2019), as data for side-by-side reports.

The same figures as docs/METHOD.md section 7, "The paper's numbers". Accuracies are the average
over the paper's 10 subject-independent folds, in percent, with the paper's `heldout`
protocol (the test fold chose the best epoch). Keys use this project's names: dataset kind
(`ckplus`, `oulu`), backbone (`inception_v3`, `resnet18`, `vgg_face`) and strategy chain
(`ce`, `focal`, `joint`, `focal>ce`, `ce>focal`).
"""

from __future__ import annotations

# (dataset kind, backbone, strategy) -> (accuracy %, where the paper prints it)
ACCURACY: dict[tuple[str, str, str], tuple[float, str]] = {
    ("ckplus", "inception_v3", "ce"): (98.2, "Tables 2, 4"),
    ("ckplus", "inception_v3", "ce>focal"): (98.8, "Tables 2, 4"),
    ("ckplus", "inception_v3", "focal"): (98.0, "Table 4"),
    ("ckplus", "inception_v3", "joint"): (97.8, "Table 4"),
    ("ckplus", "inception_v3", "focal>ce"): (98.5, "Table 4"),
    ("oulu", "inception_v3", "ce"): (87.7, "Tables 3, 4"),
    ("oulu", "inception_v3", "ce>focal"): (88.3, "Tables 3, 4"),
    ("oulu", "inception_v3", "focal"): (88.0, "Table 4"),
    ("oulu", "inception_v3", "joint"): (87.1, "Table 4"),
    ("oulu", "inception_v3", "focal>ce"): (85.1, "Table 4"),
    ("ckplus", "vgg_face", "ce"): (94.6, "Table 5"),
    ("ckplus", "vgg_face", "ce>focal"): (97.2, "Table 5"),
    ("oulu", "vgg_face", "ce"): (83.3, "Table 5"),
    ("oulu", "vgg_face", "ce>focal"): (83.7, "Table 5"),
    ("ckplus", "resnet18", "ce"): (98.4, "Table 5"),
    ("ckplus", "resnet18", "ce>focal"): (98.6, "Table 5"),
    ("oulu", "resnet18", "ce"): (87.8, "Table 5"),
    ("oulu", "resnet18", "ce>focal"): (88.3, "Table 5"),
}

# Other methods the paper compares against (Tables 2 and 3), accuracy %.
PRIOR_ART: dict[str, dict[str, float]] = {
    "ckplus": {
        "3DCNN-DAP": 92.4,
        "STM-Explet": 94.2,
        "BDBN": 96.7,
        "Exemplar-HMMs": 94.6,
        "DTAGN(Joint)": 97.3,
        "2B(N+M)Softmax": 97.1,
    },
    "oulu": {
        "HOG 3D": 70.6,
        "Atlases": 75.5,
        "STM-Explet": 74.6,
        "Exemplar-HMMs": 75.6,
        "DTAGN(Joint)": 81.5,
        "ExprGAN": 84.7,
    },
}

# Per-class accuracy changes the paper reports from stage 1 (`ce`) to stage 2 (`ce>focal`),
# Inception-v3, in percentage points. Classes not listed are not reported by the paper.
PER_CLASS_CHANGE: dict[tuple[str, str], dict[str, float]] = {
    ("ckplus", "inception_v3"): {"contempt": 5.6, "fear": 2.7, "sadness": 2.4, "anger": -0.7},
    ("oulu", "inception_v3"): {"sadness": 2.5, "surprise": 1.2, "anger": -0.4},
}

# Per-class accuracies the paper prints outright: (stage 1 %, stage 2 %).
PER_CLASS_ABSOLUTE: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("oulu", "inception_v3"): {"sadness": (87.1, 89.6)},
}

# The paper's stage-2 focal settings: (alpha, gamma); Oulu's "alpha = 0" is read as no
# weighting (None), a project decision (docs/METHOD.md D-2).
FOCAL_SETTINGS: dict[str, tuple[float | None, float]] = {
    "ckplus": (0.25, 0.0),
    "oulu": (None, 0.5),
}

# The two-stage comparison the per-class numbers refer to.
STAGE_PAIR = ("ce", "ce>focal")


# The dataset kinds the paper reports on; any other dataset (a user's manifest) is not the
# paper's, and the report does not set it beside the paper's tables.
PAPER_KINDS = frozenset(kind for kind, _, _ in ACCURACY)


def paper_accuracy(kind: str, backbone: str, strategy: str) -> float | None:
    """The paper's accuracy (%) for this cell of Tables 2–5, or None where it has none."""
    entry = ACCURACY.get((kind, backbone, strategy))
    return None if entry is None else entry[0]


def paper_source(kind: str, backbone: str, strategy: str) -> str | None:
    """Which table of the paper prints that accuracy."""
    entry = ACCURACY.get((kind, backbone, strategy))
    return None if entry is None else entry[1]


def per_class_change(kind: str, backbone: str, class_name: str) -> float | None:
    """The paper's stage-1 → stage-2 change (points) for one class, or None if unreported."""
    return PER_CLASS_CHANGE.get((kind, backbone), {}).get(class_name)
