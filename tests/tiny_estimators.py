"""Tiny classical estimators for perfgate's own tests: fitted in well under a second, cached."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from perfgate import ModelContext, ModelData
from perfgate.estimators import fit_estimator


def cancer() -> ModelData:
    """The breast cancer data set (30 features, 2 classes): 400 training and 169 held-out rows."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    return ModelData("cancer", x[400:], y[400:], x[:400], y[:400])


def diabetes() -> ModelData:
    """The diabetes regression data set (10 features, float targets): 342 training and 100 held-out rows."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.float32)
    return ModelData("diabetes", x[342:], y[342:], x[:342], y[:342])


def digit_pixels() -> ModelData:
    """scikit-learn's digits as 64 pixel features (integers 0-16): 1400 training, 397 held-out rows."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    return ModelData("digit_pixels", x[1400:], y[1400:], x[:1400], y[:1400])


def scaled_forest(ctx: ModelContext) -> Any:
    """Standard scaling, then a 30-tree random forest: every scaled value must match scikit-learn's
    to the bit, or rows cross split thresholds in the converted graph."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    forest = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1)
    return fit_estimator(make_pipeline(StandardScaler(), forest), ctx)


def tiny_xgboost(ctx: ModelContext) -> Any:
    from xgboost import XGBClassifier

    return fit_estimator(XGBClassifier(n_estimators=10, max_depth=3, random_state=0, n_jobs=1), ctx)


def tiny_lightgbm(ctx: ModelContext) -> Any:
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(n_estimators=10, num_leaves=7, random_state=0, n_jobs=1, verbose=-1)
    return fit_estimator(model, ctx)


def tiny_logreg(ctx: ModelContext) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return fit_estimator(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), ctx)


def tiny_regressor(ctx: ModelContext) -> Any:
    """A scaled 16-unit MLP regressor: standard ONNX once converted (MatMul, Add, Relu)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), MLPRegressor(hidden_layer_sizes=(16,), alpha=1.0, max_iter=200, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 200 steps are plenty for a test
        return fit_estimator(model, ctx)


def not_an_estimator(ctx: ModelContext) -> Any:
    return {"weights": [1, 2, 3]}


class Majority:
    """An estimator with scikit-learn's API that no converter knows (always the second class)."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}

    def fit(self, x: np.ndarray, y: np.ndarray) -> Majority:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile(np.array([0.25, 0.75], dtype=np.float32), (len(x), 1))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.ones(len(x), dtype=np.int64)


def unpicklable(ctx: ModelContext) -> Any:
    """A fitted pipeline holding a lambda: it predicts, but cannot be pickled."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    inputs, labels = ctx.data.training_split()
    return make_pipeline(FunctionTransformer(lambda x: x / 1000.0), LogisticRegression()).fit(inputs, labels)


def needs_an_absent_library(ctx: ModelContext) -> Any:
    import perfgate_test_library_that_is_not_installed  # noqa: F401

    raise AssertionError("unreachable: the import above fails")
