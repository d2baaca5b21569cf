"""A user's own models, data and metric, declared in matrix.toml without touching perfgate.

Two models of scikit-learn's wine data (13 features, 3 cultivars), both judged on balanced
accuracy, a metric of the user's own: a small torch MLP, and a random forest (a classical model:
its reference is the forest's own predict_proba, and ONNX Runtime runs its skl2onnx conversion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from perfgate import ModelContext, ModelData, TrainConfig, fit_estimator, train_classifier


def wine() -> ModelData:
    """Standardised wine features with a fixed, stratified held-out split."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    bunch = load_wine()
    x = bunch.data.astype(np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = bunch.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return ModelData("wine", x_eval, y_eval, x_train, y_train, calibration=x_train)


class WineMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wine_mlp(ctx: ModelContext) -> nn.Module:
    """Trained once, then loaded from perfgate's artifact cache."""
    return train_classifier(WineMLP, ctx, TrainConfig(epochs=30, batch_size=16, max_shift=0))


def wine_forest(ctx: ModelContext) -> Any:
    """A classical model (kind = "classical"): fitted once on the training split, then cached."""
    from sklearn.ensemble import RandomForestClassifier

    return fit_estimator(RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1), ctx)


def balanced_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-class recall: robust to class imbalance, higher is better."""
    predicted = outputs.argmax(axis=-1)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))
