"""The feature extractors FerNet puts its new head on, and what each expects (METHOD.md §3).

Each backbone is the original network with its classifier replaced by `Identity`, so its
state-dict keys stay those of the original model: pre-trained files load without renaming.
A backbone returns N x `feature_dim` features; one with an auxiliary head (Inception-v3)
returns `(features, aux_logits)` in training mode.

Inputs: every backbone is fed RGB images normalised with the ImageNet mean/std (what
`fer_core.data.augment` produces); `input_norm` names the `Normalisation` its pre-trained
weights were trained on, and FerNet converts to it (`input_affine`). Getting this wrong does
not fail, it only costs accuracy: VGG-Face fed ImageNet-normalised RGB instead of BGR 0..255
minus its mean sees inputs ~58x too small, with no BatchNorm to absorb it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

# torchvision's IMAGENET1K_V1 files (tests check these against torchvision's weight enums;
# kept as strings so that importing fer_core does not import torchvision: a worker running
# the tiny CNN starts seconds faster).
INCEPTION_V3_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The VGG-Face mean pixel, per channel R, G, B (MatConvNet's `averageImage`, which its demos
# subtract from RGB images). The original Caffe/Torch7 weights take BGR, so in their channel
# order the mean is reversed; subtracting (129.19, 104.76, 93.59) from B, G, R instead, as some
# ports do, is off by 35.6 on the blue and red channels.
VGG_FACE_MEAN_RGB = (129.1863, 104.7624, 93.5940)
VGG_FACE_WEIGHTS = "vgg_face-vgg16-bgr.pth"  # written by `fer_core.models.vgg_face_import`
VGG_FACE_IMPORT = "python -m orchestrator weights import vgg_face FILE"

# Where each pre-trained file lives in the local cache (see `weights.pretrained_candidates`).
TORCHVISION_CACHE = "torchvision"  # $TORCH_HOME/hub/checkpoints (torch.hub.get_dir())
FACENET_CACHE = "facenet"  # $TORCH_HOME/checkpoints (facenet_pytorch's get_torch_home())


@dataclass(frozen=True)
class Normalisation:
    """The input a backbone's weights were trained on: channels in `order` (RGB or BGR),
    pixel values on the 0..`scale` scale, then `(x - mean) / std` per channel, with `mean`
    and `std` listed in `order`. Recorded with every checkpoint and export."""

    order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


NORMALISATIONS: dict[str, Normalisation] = {
    "imagenet": Normalisation("RGB", 1.0, IMAGENET_MEAN, IMAGENET_STD),
    # the TF-ported Inception-v3 weights: [-1, 1], as torchvision's transform_input
    "inception": Normalisation("RGB", 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # facenet-pytorch's fixed_image_standardization: (x*255 - 127.5) / 128
    "facenet": Normalisation("RGB", 255.0, (127.5, 127.5, 127.5), (128.0, 128.0, 128.0)),
    # the original VGG-Face (Caffe, Torch7; MatConvNet's file once imported): BGR 0..255 minus
    # the mean pixel, no division
    "vgg_face": Normalisation("BGR", 255.0, VGG_FACE_MEAN_RGB[::-1], (1.0, 1.0, 1.0)),
}


@dataclass(frozen=True)
class BackboneSpec:
    """What FerNet needs to know about a backbone, and where its pre-trained weights come from.

    `classifier_keys` are the state-dict prefixes of the original classifier(s): ignored when
    loading weights, since FerNet replaces them. `input_norm` is a key of `NORMALISATIONS`.
    `weights_command` is how a user makes the cache file where there is nothing to download.
    """

    name: str
    input_size: int
    min_input_size: int
    feature_dim: int
    has_aux: bool
    weights_file: str | None
    weights_url: str | None
    weights_cache: str | None
    classifier_keys: tuple[str, ...]
    input_norm: str
    layout: str  # the model whose state-dict keys a weights file must have
    description: str
    build: Callable[[], nn.Module] = field(repr=False, compare=False)
    aux_fc: str | None = None  # attribute path of the aux head's last FC inside the backbone
    weights_command: str | None = None


class TinyCNN(nn.Module):
    """A small CNN for tests and the CPU demo (input 48 px), not a model of the paper.

    Four conv-BN-ReLU blocks (16/32/64/128 channels) that downsample by stride 2 rather than
    by max-pooling (on a 2-core CPU the full-resolution conv + pool of a pooled variant cost
    about half the step time), then an average pool to 2 x 2 rather than 1 x 1: expressions
    are told apart by *where* features are (brows above eyes above mouth), and a global pool
    throws that away. Measured on the synthetic CK+ twin, 10 epochs at 48 px: 3 blocks +
    global pool reached 47% train accuracy, this 70% (test 39% -> 46%, majority class 24%).
    """

    feature_dim = 128 * 2 * 2

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 64), (64, 128)):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _inception_v3() -> nn.Module:
    from fer_core.models.torchvision_backbones import inception_v3

    return inception_v3()


def _resnet18() -> nn.Module:
    from fer_core.models.torchvision_backbones import resnet18

    return resnet18()


def _vgg16() -> nn.Module:
    from fer_core.models.torchvision_backbones import vgg16

    return vgg16()


def _inception_resnet_v1() -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    # classify=True skips the L2 normalisation of the embedding; its `logits` layer (the
    # VGGFace2 identity classifier) is replaced. Internal dropout off: FerNet has its own.
    model = InceptionResnetV1(classify=True, num_classes=1, dropout_prob=0.0)
    model.logits = nn.Identity()
    return model


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="inception_v3",
            input_size=299,
            min_input_size=75,
            feature_dim=2048,
            has_aux=True,
            weights_file=INCEPTION_V3_URL.rsplit("/", 1)[-1],
            weights_url=INCEPTION_V3_URL,
            weights_cache=TORCHVISION_CACHE,
            classifier_keys=("fc.", "AuxLogits.fc."),
            input_norm="inception",
            layout="torchvision inception_v3",
            description="torchvision Inception-v3, ImageNet weights (the paper's main network)",
            build=_inception_v3,
            aux_fc="AuxLogits.fc",
        ),
        BackboneSpec(
            name="resnet18",
            input_size=224,
            min_input_size=32,
            feature_dim=512,
            has_aux=False,
            weights_file=RESNET18_URL.rsplit("/", 1)[-1],
            weights_url=RESNET18_URL,
            weights_cache=TORCHVISION_CACHE,
            classifier_keys=("fc.",),
            input_norm="imagenet",
            layout="torchvision resnet18",
            description="torchvision ResNet-18, ImageNet weights (paper Table 5)",
            build=_resnet18,
        ),
        BackboneSpec(
            name="vgg_face",
            input_size=224,
            min_input_size=32,
            feature_dim=4096,
            has_aux=False,
            weights_file=VGG_FACE_WEIGHTS,
            weights_url=None,
            weights_cache=TORCHVISION_CACHE,
            classifier_keys=("classifier.6.",),
            input_norm="vgg_face",
            layout="torchvision vgg16",
            description=(
                "VGG-16 (torchvision layout) with the original VGG-Face weights, imported from "
                "the published vgg_face.mat (paper Table 5)"
            ),
            build=_vgg16,
            weights_command=VGG_FACE_IMPORT,
        ),
        BackboneSpec(
            name="inception_resnet_v1",
            input_size=160,
            min_input_size=75,
            feature_dim=512,
            has_aux=False,
            weights_file="20180402-114759-vggface2.pt",
            weights_url=(
                "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                "20180402-114759-vggface2.pt"
            ),
            weights_cache=FACENET_CACHE,
            classifier_keys=("logits.",),
            input_norm="facenet",
            layout="facenet-pytorch InceptionResnetV1",
            description="facenet-pytorch InceptionResnetV1, VGGFace2 weights (not in the paper)",
            build=_inception_resnet_v1,
        ),
        BackboneSpec(
            name="tiny",
            input_size=48,
            min_input_size=16,
            feature_dim=TinyCNN.feature_dim,
            has_aux=False,
            weights_file=None,
            weights_url=None,
            weights_cache=None,
            classifier_keys=(),
            input_norm="imagenet",
            layout="fer_core TinyCNN",
            description="a three-conv CNN for tests and the CPU demo (not in the paper)",
            build=TinyCNN,
        ),
    )
}


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
