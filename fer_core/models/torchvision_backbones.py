"""The torchvision backbones (Inception-v3, ResNet-18, VGG-16), imported only when built.

torchvision's import pulls in torch._dynamo (seconds of start-up); a unit that trains the
tiny CNN never pays for it. torchvision ships no type information: what it returns is cast
to its type where it enters this module.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import inception as tv_inception

from fer_core.models.avg_pool import AvgPoolTo, avg_pool_to


class InceptionAuxAnySize(tv_inception.InceptionAux):  # type: ignore[misc]  # untyped base
    """torchvision's Inception-v3 aux head, also usable below ~299 px input.

    The original pools 17 x 17 maps with a 5 x 5 / stride-3 window and then applies a 5 x 5
    conv, so it fails for inputs much smaller than 299 px. Where the map is too small for
    that (< 17), this pools adaptively to 5 x 5 instead; at the paper's 299 px it is exactly
    the original. Same parameters, same state-dict keys. The 5 x 5 pool is a plain average
    pool where that is exact (fer_core.models.avg_pool), so deterministic mode can train it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 17:
            return cast(torch.Tensor, super().forward(x))
        x = avg_pool_to(x, 5)
        x = self.conv1(self.conv0(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return cast(torch.Tensor, self.fc(x))


def inception_v3() -> nn.Module:
    blocks = [
        tv_inception.BasicConv2d,
        tv_inception.InceptionA,
        tv_inception.InceptionB,
        tv_inception.InceptionC,
        tv_inception.InceptionD,
        tv_inception.InceptionE,
        InceptionAuxAnySize,
    ]
    # transform_input=False: FerNet applies the same scaling itself (input_norm "inception").
    model = tv_inception.Inception3(
        aux_logits=True, transform_input=False, inception_blocks=blocks, init_weights=False
    )
    model.fc = nn.Identity()
    model.dropout = nn.Identity()  # FerNet's own dropout sits before the new FC
    return cast(nn.Module, model)


def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return cast(nn.Module, model)


def vgg16() -> nn.Module:
    model = torchvision.models.vgg16(weights=None, init_weights=False)
    # classifier = [fc6, relu, dropout, fc7, relu, dropout, fc8]: keep fc6/fc7 (pre-trained),
    # drop fc8 and the dropout before it (FerNet's own dropout takes that place).
    model.classifier[5] = nn.Identity()
    model.classifier[6] = nn.Identity()
    model.avgpool = AvgPoolTo(7)  # at 224 px a 7 x 7 map: no pooling, deterministic backward
    return cast(nn.Module, model)
