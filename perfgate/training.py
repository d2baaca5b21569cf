"""Deterministic, cached training of classifiers, for the zoo and for fine-tuning techniques."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perfgate.cache import stable_hash
from perfgate.models import ModelContext

Loss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; every field enters the cache key of the weights it produces."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_shift: int = 2  # random translation in pixels, for image inputs of shape (C, H, W)
    label_smoothing: float = 0.05


def cross_entropy(config: TrainConfig) -> Loss:
    def loss(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), labels, label_smoothing=config.label_smoothing)

    return loss


def _shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    if max_shift == 0 or batch.ndim != 4:
        return batch
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    return torch.roll(batch, shifts=(dy, dx), dims=(2, 3))


def fit(
    model: torch.nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    progress: Callable[[str], None],
    loss: Loss | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place with AdamW and a cosine schedule; returns it in eval mode.

    :param loss: ``loss(model, inputs, labels)``; cross-entropy by default. Distillation and
        other fine-tunes pass their own.
    """
    loss = loss or cross_entropy(config)
    generator = torch.Generator().manual_seed(config.seed)
    x, y = torch.from_numpy(inputs), torch.from_numpy(labels)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(1, config.epochs * steps_per_epoch)
    )
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            value = loss(model, _shift(x[index], config.max_shift, generator), y[index])
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            total += float(value.detach()) * len(index)
        progress(f"epoch {epoch + 1}/{config.epochs}, loss {total / len(x):.4f}")
    return model.eval()


def train_classifier(
    build: Callable[[], torch.nn.Module], ctx: ModelContext, config: TrainConfig | None = None
) -> torch.nn.Module:
    """Build a classifier and train it on ``ctx.data``, or load its cached weights.

    The weights are keyed by the architecture's source and structure, the recipe, the data and
    the torch version, so that any change retrains and nothing else does.
    """
    config = config or TrainConfig()
    data = ctx.data
    inputs, labels = data.train_inputs, data.train_labels
    if inputs is None or labels is None:
        raise ValueError(f"model {ctx.name!r}: training needs train_inputs and train_labels in its data")
    torch.manual_seed(config.seed)
    model = build()
    key = stable_hash(
        "weights",
        type(model).__qualname__,
        inspect.getsource(type(model)),
        repr(model),
        asdict(config),
        data.fingerprint(),
        torch.__version__,
    )

    def train(path: Path) -> None:
        torch.manual_seed(config.seed)
        fresh = build()
        ctx.progress(f"training {ctx.name} ({config.epochs} epochs, cached afterwards)")
        fit(
            fresh,
            inputs,
            labels,
            config,
            lambda line: ctx.progress(f"{ctx.name}: {line}"),
        )
        torch.save(fresh.state_dict(), path)

    # The weights are verified against their recorded digest; one that hashes fine and still does
    # not load (a file of an incompatible torch) is retrained once (ArtifactCache.get_or_build).
    hit = ctx.cache.get_or_build("weights", key, "weights.pt", train, load=load_weights)
    model.load_state_dict(hit.value)
    return model.eval()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by ``torch.save``, tensors only (``weights_only``): the cache's ``load``."""
    return torch.load(path, weights_only=True)


def distillation_loss(teacher: torch.nn.Module, temperature: float, alpha: float) -> Loss:
    """Hinton's knowledge-distillation loss against a frozen ``teacher``.

    ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)``.
    The ``T^2`` factor keeps the soft term's gradients on the scale of the hard term's as T grows.

    :param teacher: the trained model whose softened outputs the student learns; kept in eval mode.
    :param temperature: T, how much the logits are softened (1 = plain softmax).
    :param alpha: weight of the soft term; ``1 - alpha`` goes to cross-entropy on the labels.
    """
    teacher.eval()

    def loss(student: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(inputs) / temperature, dim=-1)
        logits = student(inputs)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=-1), soft_targets, reduction="batchmean", log_target=True
        )
        return alpha * temperature**2 * soft + (1.0 - alpha) * F.cross_entropy(logits, labels)

    return loss
