"""Backbones, the FerNet head and local-only weight loading (docs/METHOD.md section 3).

- `backbones`: `BACKBONES` (name -> `BackboneSpec`: input size, aux head, weights file), the
  one registry of backbones, and `backbone_spec` (a registry entry, or a `timm:<model>`'s); no
  torch until a timm name is asked for.
- `fernet`: `FerNet` and `build_model`; `tiny`: `TinyCNN`; `torchvision_backbones`;
  `timm_backbones`.
- `weights`: finding (no torch) and strictly loading pre-trained files, never downloading.

Importing this package imports no torch either (a grid loads, and a launch checks weights,
without it): `FerNet`, `build_model` and `TinyCNN` are imported from their modules when
first asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fer_core.models.backbones import BACKBONES, BackboneSpec, backbone_spec
from fer_core.models.weights import pretrained_candidates, read_state_dict, resolve_pretrained

if TYPE_CHECKING:
    from fer_core.models.fernet import FerNet, build_model
    from fer_core.models.tiny import TinyCNN

_LAZY = {
    "FerNet": "fer_core.models.fernet",
    "build_model": "fer_core.models.fernet",
    "TinyCNN": "fer_core.models.tiny",
}

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "FerNet",
    "TinyCNN",
    "backbone_spec",
    "build_model",
    "pretrained_candidates",
    "read_state_dict",
    "resolve_pretrained",
]


def __getattr__(name: str) -> Any:
    """`FerNet`, `build_model`, `TinyCNN`: imported (with torch) on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
