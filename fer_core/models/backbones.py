"""Every backbone by name, and what each expects (METHOD.md §3): the one place a backbone is
declared.

`BACKBONES` holds all the rest of the code knows about a backbone: its input size, feature
size, aux head, weights file and where it is cached, input normalisation, and how to build
it. Grids are checked against it (`orchestrator.plan.grid`), FerNet is built from it. This
module imports no torch (a grid loads, and a launch checks weights files, without it); each
`build` imports its network when called. Adding a backbone: one `BackboneSpec` entry below,
whose builder may import its network from a library (or from a module of its own).
`backbone: timm:<model>` names any timm model without an entry: `backbone_spec` builds its
`BackboneSpec` from timm's pretrained configuration (fer_core.models.timm_backbones).

Each backbone is the original network with its classifier replaced by `Identity`, so its
state-dict keys stay those of the original model: pre-trained files load without renaming.
A backbone returns N x `feature_dim` features; one with an auxiliary head (Inception-v3)
returns `(features, aux_logits)` in training mode.

Inputs: every backbone is fed RGB images normalised with the ImageNet mean/std (what
`fer_core.data.augment` produces); `input_norm` names the `Normalisation` its pre-trained
weights were trained on, and FerNet converts to it (`fernet.input_affine`). Getting this wrong
does not fail, it only costs accuracy: VGG-Face fed ImageNet-normalised RGB instead of BGR 0..255
minus its mean sees inputs ~58x too small, with no BatchNorm to absorb it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fer_core.errors import FerError

if TYPE_CHECKING:
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
TIMM_CACHE = "timm"  # $TORCH_HOME/hub/checkpoints/timm/<name>.safetensors or .pth

TIMM_PREFIX = "timm:"  # `backbone: timm:<name>`: any timm model (fer_core.models.timm_backbones)


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
    # OpenAI CLIP's image statistics (many timm ViTs pre-trained from CLIP)
    "clip": Normalisation(
        "RGB", 1.0, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    ),
    # plain 0..1 RGB (Apple's MobileCLIP FastViTs in timm)
    "unit": Normalisation("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
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
    # True where the network is built for exactly `input_size` (timm backbones: a ViT's
    # position embedding is sized at build), so a grid cannot choose another size
    fixed_input_size: bool = False
    # (map size, output size) of each average pool to a size > 1 in its training pass, at an
    # input size: whether `deterministic: true` can train it (fer_core.models.pool_windows)
    adaptive_pools: Callable[[int], tuple[tuple[int, int], ...]] = field(
        default=lambda size: (), repr=False, compare=False
    )


def _tiny_pools(size: int) -> tuple[tuple[int, int], ...]:
    for _ in range(4):  # four 3 x 3 convs, stride 2, padding 1
        size = (size + 1) // 2
    return ((size, 2),)


def _inception_v3_pools(size: int) -> tuple[tuple[int, int], ...]:
    """The aux head pools adaptively to 5 x 5 below a 17 x 17 map (InceptionAuxAnySize)."""
    size = (size - 3) // 2 + 1 - 2  # Conv2d_1a (3 x 3, stride 2), Conv2d_2a (3 x 3)
    size = (size - 3) // 2 + 1 - 2  # max pool (3, stride 2), Conv2d_4a (3 x 3)
    size = (size - 3) // 2 + 1  # max pool (3, stride 2); Mixed_5* keep the size
    size = (size - 3) // 2 + 1  # Mixed_6a (stride 2): the aux head's input
    return () if size >= 17 else ((size, 5),)


def _vgg16_pools(size: int) -> tuple[tuple[int, int], ...]:
    return ((size // 32, 7),)  # five 2 x 2 max pools, then the pool to 7 x 7


def _tiny() -> nn.Module:
    from fer_core.models.tiny import TinyCNN

    return TinyCNN()


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
    from torch import nn

    # classify=True skips the L2 normalisation of the embedding; its `logits` layer (the
    # VGGFace2 identity classifier) is replaced. Internal dropout off: FerNet has its own.
    model: nn.Module = InceptionResnetV1(classify=True, num_classes=1, dropout_prob=0.0)
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
            adaptive_pools=_inception_v3_pools,
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
            adaptive_pools=_vgg16_pools,
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
            feature_dim=128 * 2 * 2,  # TinyCNN: 128 channels, pooled to 2 x 2
            has_aux=False,
            weights_file=None,
            weights_url=None,
            weights_cache=None,
            classifier_keys=(),
            input_norm="imagenet",
            layout="fer_core TinyCNN",
            description="a three-conv CNN for tests and the CPU demo (not in the paper)",
            build=_tiny,
            adaptive_pools=_tiny_pools,
        ),
    )
}


def backbone_spec(name: str, where: str = "backbone") -> BackboneSpec:
    """The `BackboneSpec` of `name`: a `BACKBONES` entry, or for `timm:<model>` one read from
    timm's pretrained configuration (importing timm and torch, only when a grid names one).
    An unknown name is a FerError prefixed with `where`."""
    spec = BACKBONES.get(name)
    if spec is not None:
        return spec
    if name.startswith(TIMM_PREFIX):
        from fer_core.models.timm_backbones import timm_spec

        return timm_spec(name.removeprefix(TIMM_PREFIX), where)
    raise FerError(
        f"{where}: unknown backbone {name!r}; known: {', '.join(BACKBONES)}, or "
        f"{TIMM_PREFIX}<model> for any timm model"
    )
