"""Models of the matrix: a factory and a data loader named in the matrix file, loaded once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from perfgate.cache import ArtifactCache
from perfgate.data import ModelData
from perfgate.model_kinds import MODEL_KINDS, TORCH


@dataclass(frozen=True)
class ModelContext:
    """What a model factory receives: the model's data, the artifact cache, a progress line."""

    name: str
    data: ModelData
    cache: ArtifactCache
    options: dict[str, Any]
    progress: Callable[[str], None]


def model_fingerprint(model: Any) -> str:
    """A hash of a torch module's class source, structure and every parameter and buffer."""
    return MODEL_KINDS[TORCH].fingerprint(model)


@dataclass
class LoadedModel:
    """A model ready for cases: the FP32 model as its factory returned it, its data, its fingerprint."""

    name: str
    module: Any  # a torch.nn.Module in eval mode, or a fitted estimator (``kind``)
    data: ModelData
    key: str
    kind: str = TORCH  # perfgate.model_kinds
