"""Loading pre-trained backbone weights from local files only (docs/METHOD.md D-5).

Compute nodes are often offline, so nothing here downloads: `pretrained` means "the file in
the local cache where torchvision / facenet-pytorch would have put it" (for a timm model: its
Hugging Face file under $TORCH_HOME/hub/checkpoints/timm/), and a missing file is
an error naming that path — never a silent random init. Files are read with
`torch.load(weights_only=True)`, so a file carrying arbitrary pickled code is refused, or, for
`.safetensors` (timm's hub files), with the safetensors package, which holds tensors only.

Loading ignores the original classifier (`BackboneSpec.classifier_keys`) and is strict about
everything else: a missing, unexpected or differently shaped key is an error naming the file
and the first offending keys. Torch is imported only where a file is read: finding one
(`check_weights`, a launch's pre-flight) needs none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fer_core.errors import FerError
from fer_core.models.backbones import (
    FACENET_CACHE,
    TIMM_CACHE,
    TORCHVISION_CACHE,
    BackboneSpec,
    backbone_spec,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

SHOWN = 3  # offending keys named per kind in an error message


def _torch_home() -> Path:
    """$TORCH_HOME, else $XDG_CACHE_HOME/torch: torch's `_get_torch_home()` and facenet-pytorch's
    `get_torch_home()` alike, computed here so that checking for a file imports no torch."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def pretrained_candidates(spec: BackboneSpec) -> list[Path]:
    """Where `weights="pretrained"` looks for `spec`'s file, first match wins."""
    if spec.weights_file is None:
        return []
    hub = _torch_home() / "hub" / "checkpoints" / spec.weights_file  # torch.hub.get_dir()
    if spec.weights_cache == FACENET_CACHE:
        return [_torch_home() / "checkpoints" / spec.weights_file, hub]
    if spec.weights_cache == TORCHVISION_CACHE:
        return [hub]
    if spec.weights_cache == TIMM_CACHE:  # weights_file: the timm model name
        folder = _torch_home() / "hub" / "checkpoints" / "timm"
        return [folder / f"{spec.weights_file}.safetensors", folder / f"{spec.weights_file}.pth"]
    raise ValueError(f"{spec.name}: unknown weights cache {spec.weights_cache!r}")


def resolve_pretrained(spec: BackboneSpec) -> Path:
    """The cached pre-trained file of `spec`, or a FerError saying where to put it."""
    if spec.weights_file is None:
        raise FerError(
            f"weights: backbone {spec.name} has no pre-trained cache file; pass weights: PATH "
            f"to a state dict in {spec.layout} key layout, or weights: none"
        )
    candidates = pretrained_candidates(spec)
    for path in candidates:
        if path.is_file():
            return path
    where = " or ".join(str(p) for p in candidates)
    if spec.weights_command is not None:
        raise FerError(
            f"weights: pre-trained {spec.name} file not found at {where}; produce it with "
            f"`{spec.weights_command}` (or pass weights: PATH to a state dict in {spec.layout} "
            "key layout)"
        )
    raise FerError(
        f"weights: pre-trained {spec.name} file not found at {where} (nothing is downloaded: "
        f"compute nodes are often offline); on a machine with internet download "
        f"{spec.weights_url} and copy it to {candidates[0]} (or set TORCH_HOME), "
        "or pass weights: PATH to the file"
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file: plain, under "state_dict"/"model", or a FerNet's."""
    import torch

    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise FerError(
            f"weights: {path} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "names to tensors); save one with torch.save(model.state_dict(), path)"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # a DataParallel wrapper
        state = {k[len("module.") :]: v for k, v in state.items()}
    if state and all(k.startswith(("backbone.", "head.")) for k in state):  # a FerNet's
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with `weights_only=True` (a `.safetensors` file with the safetensors
    package, which holds tensors only); any failure is a FerError naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FerError(
            f"weights: {str(path)!r} is not an existing file (weights must be none, pretrained "
            "or the path of a state dict)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle payload, a truncated or foreign file
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise FerError(
                f"weights: {path} holds pickled Python objects besides tensors ({found.group(1)}), "
                "which torch.load(weights_only=True) refuses to run; save plain tensors with "
                "torch.save(model.state_dict(), path)"
            ) from exc
        raise FerError(
            f"weights: {path} cannot be read as a state dict ({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from exc
    return _unwrap(obj, path)


def load_backbone_weights(
    backbone: nn.Module, spec: BackboneSpec, state: Mapping[str, torch.Tensor], source: Path
) -> None:
    """Load `state` (original model key layout) into `backbone`, all but the classifier."""

    def ignored(key: str) -> bool:
        return key.startswith(spec.classifier_keys) if spec.classifier_keys else False

    own = backbone.state_dict()
    wanted = {k: v for k, v in state.items() if not ignored(k)}
    missing = [
        k
        for k in own
        if not ignored(k) and k not in wanted and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in wanted if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in wanted.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{label} {', '.join(keys[:SHOWN])}"
        + (f" (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape file vs model", shapes),
        )
        if keys
    ]
    if problems:
        raise FerError(
            f"weights: {source} does not fit backbone {spec.name}: {'; '.join(problems)}; "
            f"it must be a state dict in {spec.layout} key layout"
        )
    backbone.load_state_dict(wanted, strict=False)


def check_weights(backbone: str, weights: str) -> Path | None:
    """The file `weights` of `backbone` names (None for `none`), or a FerError naming the
    expected path (and how to make it) when it cannot be found; reads nothing (a launch
    checks every backbone this way, and the plan digests the file it returns)."""
    if weights == "none":
        return None
    if weights == "pretrained":
        return resolve_pretrained(backbone_spec(backbone))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FerError(
            f"weights: backbone {backbone}: file {weights!r} not found (weights must be none, "
            "pretrained or the path of a state dict)"
        )
    return path
