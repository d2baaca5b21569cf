"""Models of the matrix: a factory and a data loader named in the matrix file, loaded once."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from perfgate.cache import ArtifactCache
from perfgate.data import ModelData


@dataclass(frozen=True)
class ModelContext:
    """What a model factory receives: the model's data, the artifact cache, a progress line."""

    name: str
    data: ModelData
    cache: ArtifactCache
    options: dict[str, Any]
    progress: Callable[[str], None]


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a module's class source, structure and every parameter and buffer."""
    digest = hashlib.sha256()
    digest.update(type(model).__qualname__.encode())
    # Classes built at run time have no source; their repr and weights still count.
    with contextlib.suppress(OSError, TypeError):
        digest.update(inspect.getsource(type(model)).encode())
    digest.update(repr(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@dataclass
class LoadedModel:
    """A model ready for cases: the FP32 module, its data, and its fingerprint."""

    name: str
    module: torch.nn.Module
    data: ModelData
    key: str
