"""Scoring a model on a set of face crops: its predictions, confusion matrix and metrics.

Confusion matrices follow the paper's figures: rows are the ground truth, columns the
prediction; `row_normalised` turns counts into per-class rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fer_core.data.augment import test_transform
from fer_core.metrics import Metrics, metrics


@dataclass(frozen=True)
class Evaluation:
    """Per-image probabilities and predictions with the summary figures derived from them."""

    probabilities: torch.Tensor  # N x C, float32, on the CPU
    predicted: torch.Tensor  # N, int64
    labels: torch.Tensor  # N, int64

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[1])

    @property
    def accuracy(self) -> float:
        """Overall accuracy (what selects a stage's best epoch); NaN with no images."""
        return self.metrics().accuracy

    def confusion(self) -> torch.Tensor:
        """Counts, rows = ground truth, columns = prediction."""
        c = self.num_classes
        flat = self.labels * c + self.predicted
        return torch.bincount(flat, minlength=c * c).reshape(c, c)

    def metrics(self) -> Metrics:
        """Accuracy, mean-class accuracy, macro-F1 and per-class recall (`fer_core.metrics`)."""
        return metrics(self.confusion().numpy())


def row_normalised(confusion: torch.Tensor) -> torch.Tensor:
    """Each row divided by its total (a row with no images stays zero)."""
    totals = confusion.sum(dim=1, keepdim=True).clamp(min=1)
    return confusion.double() / totals


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    input_size: int,
    batch_size: int = 128,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Class probabilities (N x C, CPU float32) of uint8 crops already on the model's device."""
    model.eval()
    device = images.device
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = test_transform(images[start : start + batch_size], input_size)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(batch)
        chunks.append(torch.softmax(logits.float(), dim=1))
    if not chunks:
        classes = getattr(model, "num_classes", 0)
        return torch.empty(0, classes)
    return torch.cat(chunks).cpu()


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    input_size: int,
    batch_size: int = 128,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Evaluation:
    """Score `model` on uint8 crops `images` (on the model's device) against `labels`."""
    probabilities = predict(model, images, input_size, batch_size, autocast_dtype, channels_last)
    return Evaluation(probabilities, probabilities.argmax(dim=1), labels.cpu().long())
