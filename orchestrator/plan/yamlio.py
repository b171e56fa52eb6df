"""Reading YAML config files safely, with errors that name the file and the key.

`yaml.safe_load`'s loader only: a `!!python/object` tag is refused, never executed. A key
given twice in one mapping is refused too (YAML would silently keep the last one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fer_core.errors import FerError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; any problem is a one-line FerError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FerError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FerError(f"{path}: not valid YAML{where}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise FerError(f"{path}: not a text file") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise FerError(f"{path}: the top level must be a mapping of keys, got {kind}")
    return data


def check_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    """Reject unknown keys by name: a typo must not pass silently."""
    if not isinstance(mapping, dict):
        raise FerError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = sorted(str(k) for k in set(mapping) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise FerError(f"{where}: unknown key {unknown[0]!r}; allowed: {known}")
