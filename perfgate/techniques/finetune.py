"""Cached fine-tuning for techniques that retrain a transformed model (pruning, distillation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from perfgate.cache import stable_hash
from perfgate.techniques.base import NotApplicable, TransformContext
from perfgate.training import Loss, TrainConfig, fit
from perfgate.validation import Rule, integer, number

# The options of the short fine-tune every pruning technique runs (see fine_tune_config).
FINE_TUNE_OPTIONS: dict[str, Rule] = {
    "epochs": integer(1, hint="fine-tune epochs"),
    "lr": number(0, low_open=True, hint="the fine-tune's learning rate"),
}


def fine_tune_config(options: dict[str, Any]) -> TrainConfig:
    """The short, low-learning-rate recipe of a fine-tune, from the technique's options.

    :param options: the technique options; ``epochs`` and ``lr`` override the defaults.
    """
    # One pixel of shift, not the zoo's two: a fine-tune recovers, it does not re-learn invariances.
    return TrainConfig(epochs=int(options.get("epochs", 4)), lr=float(options.get("lr", 1e-3)), max_shift=1)


def require_labels(ctx: TransformContext, technique: str) -> None:
    """Refuse a model whose training split has no class labels: fine-tuning needs them.

    Every fine-tune (pruning, distillation, QAT) minimizes cross-entropy against integer class
    ids; a regression target (float labels) or labels of another shape cannot train that way.

    :raises NotApplicable: the model has no labelled training split, or its labels are not class
        ids; the message names the model and what is missing, and the case is skipped.
    """
    data = ctx.data
    if data.train_inputs is None or data.train_labels is None:
        raise NotApplicable(
            f"{technique} fine-tunes on labelled training data and model {ctx.model_name!r} has none "
            "(it is judged on fidelity to FP32 only)"
        )
    labels = np.asarray(data.train_labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise NotApplicable(
            f"{technique} fine-tunes with cross-entropy on integer class labels, and model "
            f"{ctx.model_name!r} has {labels.dtype} training labels of shape {labels.shape} "
            "(a regression target?): it does not apply to this model"
        )


def cached_fit(
    module: torch.nn.Module,
    ctx: TransformContext,
    kind: str,
    key: str,
    config: TrainConfig,
    loss: Loss | None = None,
    before: Callable[[torch.nn.Module], None] | None = None,
    after: Callable[[torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Fine-tune ``module`` on the model's training split, or load the cached result; in place.

    :param kind: the cache folder (``pruned``, ``distilled``).
    :param key: what the result depends on beyond the input model and the recipe.
    :param before: prepares the module for training (e.g. attaches pruning masks).
    :param after: runs after training, before saving (e.g. removes the masks).
    """
    full_key = stable_hash(kind, ctx.model_key, key, config, ctx.data.fingerprint(), torch.__version__)

    def build(path: Any) -> None:
        ctx.progress(f"{ctx.model_name}: {kind} fine-tune ({config.epochs} epochs, cached afterwards)")
        if before is not None:
            before(module)
        fit(module, *ctx.data.training_split(), config,
            lambda line: ctx.progress(f"{ctx.model_name} {kind}: {line}"), loss)  # fmt: skip
        if after is not None:
            after(module)
        torch.save(module.state_dict(), path)

    hit = ctx.cache.get_or_build(
        kind, full_key, "weights.pt", build, load=lambda p: torch.load(p, weights_only=True)
    )
    module.load_state_dict(hit.value)
    return module.eval()


def parameter_count(module: torch.nn.Module) -> int:
    """Number of parameters (not buffers) of ``module``."""
    return sum(p.numel() for p in module.parameters())
