"""Deterministic, cached fitting of classical estimators, for the zoo and for a user's factory."""

from __future__ import annotations

import importlib.metadata
import json
import pickle
from pathlib import Path
from typing import Any

from perfgate.cache import stable_hash
from perfgate.models import ModelContext

# The libraries whose version changes what a fit produces: part of the cache key.
FITTING_LIBRARIES = ("scikit-learn", "xgboost", "xgboost-cpu", "lightgbm", "numpy")


def _versions() -> dict[str, str]:
    found = {}
    for name in FITTING_LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def estimator_key(estimator: Any, data_fingerprint: str) -> str:
    """What a fit depends on: the estimator's class and every hyper-parameter (a pipeline's steps'
    too), the training data, and the fitting libraries' versions."""
    params = json.dumps(estimator.get_params(deep=True), sort_keys=True, default=repr)
    name = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    return stable_hash("estimator", name, params, data_fingerprint, _versions())


def fit_estimator(estimator: Any, ctx: ModelContext) -> Any:
    """Fit ``estimator`` on the model's labelled training split once; later sessions load it.

    A factory of a ``kind = "classical"`` model returns what this returns. Seed the estimator
    (``random_state=0``) so that a cache miss refits the same model. Example::

        def wine_boosted(ctx: ModelContext) -> Any:
            return fit_estimator(HistGradientBoostingClassifier(random_state=0), ctx)

    :param estimator: an unfitted scikit-learn-API estimator or pipeline.
    :param ctx: what the factory received; its data must have ``train_inputs`` and ``train_labels``.
    :returns: the fitted estimator, from perfgate's artifact cache when it was fitted before.
    """
    inputs, labels = ctx.data.training_split()
    inputs = inputs.reshape(len(inputs), -1)  # estimators take rows of features

    def fit(path: Path) -> None:
        ctx.progress(f"{ctx.name}: fitting {type(estimator).__name__} (cached for later runs)")
        path.write_bytes(pickle.dumps(estimator.fit(inputs, labels), protocol=5))

    def load(path: Path) -> Any:
        return pickle.loads(path.read_bytes())  # perfgate's own cache entry, verified by digest

    key = estimator_key(estimator, ctx.data.fingerprint())
    return ctx.cache.get_or_build("estimator", key, "estimator.pkl", fit, load=load).value
