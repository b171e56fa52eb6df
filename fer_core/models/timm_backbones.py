"""`backbone: timm:<model>`: any timm model as a FerNet backbone, described by timm itself.

timm lists hundreds of models, so they have no `BACKBONES` entries: `timm_spec` reads the
model's pretrained configuration (input size, mean and std, classifier name) and its feature
size from a copy built on the meta device (no memory, no weights), and returns the
`BackboneSpec` the rest of the code uses. timm imports torch, so this module is imported only
where a grid or a unit names a timm backbone.

Weights are never downloaded (`pretrained=True` is never passed): `weights: pretrained` is the
model's Hugging Face file copied to `$TORCH_HOME/hub/checkpoints/timm/<model>.safetensors`
(or `.pth`), see `fer_core.models.weights`. The input size is the pretrained one and fixed:
a ViT's position embedding is sized for it.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import timm
import torch
from torch import nn

from fer_core.errors import FerError
from fer_core.models.backbones import NORMALISATIONS, TIMM_CACHE, TIMM_PREFIX, BackboneSpec

HF_FILE = "model.safetensors"  # the file of every timm model on the Hugging Face hub


def _norm_key(model: str, mean: tuple[float, ...], std: tuple[float, ...], where: str) -> str:
    """The `NORMALISATIONS` key whose RGB 0..1 mean/std are the model's."""
    for key, norm in NORMALISATIONS.items():
        same = all(
            abs(a - b) < 1e-6 for a, b in zip((*norm.mean, *norm.std), (*mean, *std), strict=True)
        )
        if norm.order == "RGB" and norm.scale == 1.0 and same:
            return key
    raise FerError(
        f"{where}: {TIMM_PREFIX}{model} expects input mean {mean}, std {std}, which is none of "
        f"the known normalisations ({', '.join(NORMALISATIONS)})"
    )


def _build(model: str) -> nn.Module:
    """The timm model without its classifier (`num_classes=0`): it returns pooled features."""
    network: nn.Module = timm.create_model(model, pretrained=False, num_classes=0)
    return network


@functools.cache
def timm_spec(model: str, where: str = "backbone") -> BackboneSpec:
    """The `BackboneSpec` of timm model `model` (`name` or `name.tag`, as timm accepts it)."""
    if not timm.is_model(model):
        raise FerError(
            f"{where}: {TIMM_PREFIX}{model} is not a timm {timm.__version__} model; "
            "list them with python -c 'import timm; print(timm.list_models())'"
        )
    arch, _, tag = model.partition(".")
    tags = timm.list_pretrained(f"{arch}.*")
    if tag and model not in tags:
        raise FerError(
            f"{where}: {TIMM_PREFIX}{model}: timm has no pretrained tag {tag!r} for {arch}; "
            f"it has {', '.join(t.partition('.')[2] for t in tags) or 'none'}"
        )
    with torch.device("meta"):
        network = _build(model)
    # timm sets both on every model; nn.Module's typing knows neither
    cfg = cast(dict[str, Any], network.pretrained_cfg)
    features = cast(int, network.num_features)
    _, height, width = cfg["input_size"]
    if height != width:
        raise FerError(f"{where}: {TIMM_PREFIX}{model} takes {height} x {width} input, not square")
    classifier = cfg.get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    hub_id = cfg.get("hf_hub_id")
    return BackboneSpec(
        name=f"{TIMM_PREFIX}{model}",
        input_size=int(height),
        min_input_size=int(height),
        feature_dim=features,
        has_aux=False,
        weights_file=model if hub_id else None,
        weights_url=f"https://huggingface.co/{hub_id}/resolve/main/{HF_FILE}" if hub_id else None,
        weights_cache=TIMM_CACHE if hub_id else None,
        classifier_keys=tuple(f"{n}." for n in names),
        input_norm=_norm_key(model, tuple(cfg["mean"]), tuple(cfg["std"]), where),
        layout=f"timm {model}",
        description=f"timm {timm.__version__} {model} ({hub_id or 'no published weights'})",
        build=functools.partial(_build, model),
        fixed_input_size=True,
    )
