"""The feature extractors FerNet puts its new head on, and what each expects (PAPER.md "Networks").

Each backbone is the original network with its classifier replaced by `Identity`, so its
state-dict keys stay those of the original model: pre-trained files load without renaming.
A backbone returns N x `feature_dim` features; one with an auxiliary head (Inception-v3)
returns `(features, aux_logits)` in training mode.

Inputs: every backbone is fed RGB images normalised with the ImageNet mean/std (what
`fer_core.data.augment` produces); `input_norm` says how FerNet converts that to what the
pre-trained weights were trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

# torchvision's IMAGENET1K_V1 files (tests check these against torchvision's weight enums;
# kept as strings so that importing fer_core does not import torchvision: a worker running
# the tiny CNN starts seconds faster).
INCEPTION_V3_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Where each pre-trained file lives in the local cache (see `weights.pretrained_candidates`).
TORCHVISION_CACHE = "torchvision"  # $TORCH_HOME/hub/checkpoints (torch.hub.get_dir())
FACENET_CACHE = "facenet"  # $TORCH_HOME/checkpoints (facenet_pytorch's get_torch_home())


@dataclass(frozen=True)
class BackboneSpec:
    """What FerNet needs to know about a backbone, and where its pre-trained weights come from.

    `classifier_keys` are the state-dict prefixes of the original classifier(s): ignored when
    loading weights, since FerNet replaces them. `input_norm` is one of `imagenet` (no change),
    `inception` (the [-1, 1] scaling of the TF-ported Inception-v3 weights, as torchvision's
    `transform_input`) or `facenet` (facenet-pytorch's `(x*255 - 127.5) / 128`).
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
            weights_file=None,
            weights_url=None,
            weights_cache=None,
            classifier_keys=("classifier.6.",),
            input_norm="imagenet",
            layout="torchvision vgg16",
            description=(
                "VGG-16 (torchvision layout) with user-supplied VGG-Face weights (paper Table 5; "
                "converting the original Caffe/Torch files is up to the user)"
            ),
            build=_vgg16,
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
    """Per-channel (scale, shift), 1 x 3 x 1 x 1, turning ImageNet-normalised input into what
    the backbone's weights expect; None when nothing needs changing."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    if input_norm == "imagenet":
        return None
    if input_norm == "inception":  # ((x*std + mean) - 0.5) / 0.5, as torchvision's transform_input
        return std / 0.5, (mean - 0.5) / 0.5
    if input_norm == "facenet":  # ((x*std + mean) * 255 - 127.5) / 128
        return std * 255 / 128, (mean * 255 - 127.5) / 128
    raise ValueError(f"unknown input_norm {input_norm!r}")
