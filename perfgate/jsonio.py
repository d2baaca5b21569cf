"""JSON that diffs well: sorted keys, one field per line, number lists kept on one line."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from perfgate.cache import atomic_write_text

_NUMBER_LIST = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as strings a reader can spot."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps_stable(data: Any) -> str:
    text = json.dumps(_finite(data), indent=1, sort_keys=True, ensure_ascii=True)
    return (
        _NUMBER_LIST.sub(lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]", text)
        + "\n"
    )


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` atomically as stable JSON."""
    atomic_write_text(Path(path), dumps_stable(data))
