"""FerNet: a backbone, dropout and a new last FC sized to the expression classes.

docs/METHOD.md section 3: the last FC (and Inception-v3's aux FC) has `num_classes` outputs, weights
drawn from N(0, 0.001²) and bias 0, re-drawn at the start of every stage (`reset_head`), with
dropout 0.5 before it. Decision: Inception-v3 trains with its aux logits (the trainer adds
0.4 × the aux loss) and is evaluated on the main logits.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from fer_core.errors import FerError
from fer_core.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALISATIONS,
    BackboneSpec,
    backbone_spec,
)
from fer_core.models.weights import load_backbone_weights, read_state_dict, resolve_pretrained


def input_affine(input_norm: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (scale, shift), 1 x 3 x 1 x 1, turning ImageNet-normalised RGB input into
    what the backbone's weights expect (after reversing the channels when its order is BGR:
    the factors are listed in the backbone's order); None when nothing needs changing.

    The ImageNet normalisation is undone (x*std + mean, 0..1) and the backbone's applied:
    ((x*std + mean) * scale - target_mean) / target_std.
    """
    if input_norm not in NORMALISATIONS:
        raise ValueError(f"unknown input_norm {input_norm!r}")
    if input_norm == "imagenet":
        return None
    target = NORMALISATIONS[input_norm]
    order = [2, 1, 0] if target.order == "BGR" else [0, 1, 2]
    mean = torch.tensor(IMAGENET_MEAN)[order].view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD)[order].view(1, 3, 1, 1)
    target_mean = torch.tensor(target.mean).view(1, 3, 1, 1)
    target_std = torch.tensor(target.std).view(1, 3, 1, 1)
    return std * target.scale / target_std, (mean * target.scale - target_mean) / target_std


class FerNet(nn.Module):
    """`backbone -> dropout -> head`; input is RGB normalised with the ImageNet mean/std.

    `forward` returns logits, or `(logits, aux_logits)` in training mode when the backbone has
    an aux head. `head_prefixes` are the state-dict prefixes of the freshly drawn layers, so a
    caller can check that a stage started from its parent's weights everywhere else.
    """

    input_scale: torch.Tensor | None  # buffers (register_buffer), None for plain RGB input
    input_shift: torch.Tensor | None

    def __init__(
        self,
        spec: BackboneSpec,
        backbone: nn.Module,
        num_classes: int,
        dropout: float = 0.5,
        fc_std: float = 0.001,
    ) -> None:
        super().__init__()
        self.backbone_name = spec.name
        self.input_size = spec.input_size
        self.input_norm = spec.input_norm
        self.input_bgr = NORMALISATIONS[spec.input_norm].order == "BGR"
        self.num_classes = num_classes
        self.fc_std = fc_std
        self.weights_source = "none"
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(spec.feature_dim, num_classes)
        prefixes = ["head."]
        if spec.aux_fc is not None:
            parent_path, _, leaf = spec.aux_fc.rpartition(".")
            parent = backbone.get_submodule(parent_path) if parent_path else backbone
            old = getattr(parent, leaf)
            setattr(parent, leaf, nn.Linear(old.in_features, num_classes))
            prefixes.append(f"backbone.{spec.aux_fc}.")
        self.head_prefixes: tuple[str, ...] = tuple(prefixes)
        affine = input_affine(spec.input_norm)
        # Not persistent: a fixed property of the backbone, not a weight to checkpoint.
        self.register_buffer("input_scale", None if affine is None else affine[0], persistent=False)
        self.register_buffer("input_shift", None if affine is None else affine[1], persistent=False)
        self.reset_head()

    def heads(self) -> list[nn.Linear]:
        """The freshly drawn FC layers: the main head, then the aux head if any."""
        layers = [self.get_submodule(p.removesuffix(".")) for p in self.head_prefixes]
        return [layer for layer in layers if isinstance(layer, nn.Linear)]

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the head(s): weights N(0, fc_std²), bias 0 (called at every stage start).

        Drawn on the CPU (a CPU `generator` gives the same weights on any device), then copied.
        """
        for layer in self.heads():
            weight = torch.empty(layer.weight.shape).normal_(0.0, self.fc_std, generator=generator)
            layer.weight.copy_(weight)
            if layer.bias is not None:
                layer.bias.zero_()

    def backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised RGB -> what the backbone's weights expect (`input_norm`)."""
        if self.input_bgr:
            x = x.flip(1)
        if self.input_scale is not None and self.input_shift is not None:
            x = x * self.input_scale + self.input_shift  # broadcast: keeps channels-last
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone(self.backbone_input(x))
        aux = None
        if isinstance(out, tuple):  # torchvision's InceptionOutputs in training mode
            out, aux = out
        logits: torch.Tensor = self.head(self.dropout(out))
        if aux is not None:
            return logits, aux
        return logits


def build_model(
    backbone: str,
    num_classes: int,
    weights: str | os.PathLike[str] = "none",
    dropout: float = 0.5,
    fc_std: float = 0.001,
) -> FerNet:
    """A FerNet on `backbone` with a fresh `num_classes`-way head.

    `weights`: `none` (random init, e.g. for tests or when a parent checkpoint is loaded next),
    `pretrained` (the backbone's file in the local torch cache; never downloaded) or the path of
    a state dict in the original model's key layout. The original classifier is ignored.
    """
    spec = backbone_spec(backbone)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise FerError(f"num_classes: {num_classes!r} must be an integer >= 2")
    if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise FerError(f"dropout: {dropout!r} must be in [0, 1)")
    if not isinstance(fc_std, int | float) or not math.isfinite(fc_std) or fc_std <= 0:
        raise FerError(f"fc_std: {fc_std!r} must be a finite number > 0")
    source: Path | None = None
    if weights == "pretrained":
        source = resolve_pretrained(spec)
    elif weights != "none":
        if not isinstance(weights, str | os.PathLike) or str(weights) == "":
            raise FerError(f"weights: {weights!r} must be none, pretrained or a file path")
        source = Path(weights)
    state = read_state_dict(source) if source is not None else None
    model = FerNet(spec, spec.build(), num_classes, dropout, fc_std)
    if state is not None and source is not None:
        load_backbone_weights(model.backbone, spec, state, source)
        model.weights_source = str(source)
    return model
