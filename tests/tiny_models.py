"""Tiny models and generated data for perfgate's own tests (trained in about a second)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from perfgate import ModelContext, ModelData, TrainConfig, train_classifier


def blobs() -> ModelData:
    """Four well-separated Gaussian blobs in 16 dimensions: a task a small MLP learns perfectly."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(4, 16)).astype(np.float32)
    labels = rng.integers(0, 4, size=600).astype(np.int64)
    inputs = (centers[labels] + rng.normal(0, 0.5, size=(600, 16))).astype(np.float32)
    return ModelData(
        name="blobs",
        eval_inputs=inputs[:200],
        eval_labels=labels[:200],
        train_inputs=inputs[200:],
        train_labels=labels[200:],
        calibration=inputs[200:328],
    )


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_mlp(ctx: ModelContext) -> nn.Module:
    return train_classifier(TinyMLP, ctx, TrainConfig(epochs=5, max_shift=0))


class Broken(nn.Module):
    """Returns NaN: the finite-output gate must fail it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 4), float("nan"))


def nan_model(ctx: ModelContext) -> nn.Module:
    return Broken()


class Slowed(nn.Module):
    """Wraps the tiny MLP and burns extra CPU time per call: a real injected slowdown.

    The delay, in microseconds, comes from PERFGATE_TEST_DELAY_US so one test can time the same
    case with and without it.
    """

    def __init__(self, inner: nn.Module, delay_us: float) -> None:
        super().__init__()
        self.inner = inner
        self.delay_s = delay_us / 1e6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            import time

            end = time.perf_counter() + self.delay_s
            while time.perf_counter() < end:
                pass
        return self.inner(x)


def slowed_mlp(ctx: ModelContext) -> nn.Module:
    return Slowed(tiny_mlp(ctx), float(os.environ.get("PERFGATE_TEST_DELAY_US", "0")))
