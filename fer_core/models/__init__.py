"""Backbones, the FerNet head and local-only weight loading (docs/METHOD.md section 3).

- `backbones`: `BACKBONES` (name -> `BackboneSpec`: input size, aux head, weights file).
- `fernet`: `FerNet` and `build_model`.
- `weights`: finding and strictly loading pre-trained files, never downloading.
"""

from fer_core.models.backbones import BACKBONES, BackboneSpec, TinyCNN
from fer_core.models.fernet import FerNet, build_model
from fer_core.models.weights import pretrained_candidates, read_state_dict, resolve_pretrained

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FerNet",
    "TinyCNN",
    "build_model",
    "pretrained_candidates",
    "read_state_dict",
    "resolve_pretrained",
]
