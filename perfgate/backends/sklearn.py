"""A classical estimator run by its own library: the reference of every classical model.

scikit-learn estimators and pipelines, and XGBoost's and LightGBM's estimators through their
scikit-learn API. The timed call is ``predict_proba`` for a classifier and ``predict`` for a
regressor (perfgate.backends.estimator_onnx.predict_outputs): what the ONNX backends' outputs are
compared with. Threads: every ``n_jobs`` of the estimator (a pipeline's steps included) is set to
the case's intra-op count, and the native pools that ``threadpoolctl`` knows (OpenMP, which
scikit-learn's histogram boosting, XGBoost and LightGBM use; BLAS, for linear models and MLPs) are
limited to it while the session lives.
"""

from __future__ import annotations

import copy
import importlib.metadata
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.backends.estimator_onnx import is_classifier
from perfgate.model_kinds import CLASSICAL, MODEL_KINDS


def _thread_params(estimator: Any) -> list[str]:
    """The estimator's parameters that set a thread count (``n_jobs``, ``clf__n_jobs``...)."""
    return sorted(name for name in estimator.get_params(deep=True) if name.rpartition("__")[2] == "n_jobs")


class EstimatorSession:
    """A fitted estimator, its thread pools limited while the session lives."""

    needs_sync = False

    def __init__(self, estimator: Any, threads: int | None) -> None:
        from threadpoolctl import threadpool_limits

        self.estimator = estimator
        self._predict = estimator.predict_proba if is_classifier(estimator) else estimator.predict
        # Released in close(): the limits are process-wide, and a later case sets its own.
        self._limits = threadpool_limits(limits=threads) if threads is not None else None
        original = self._limits.get_original_num_threads() if self._limits is not None else {}
        pools = sorted(api for api, count in original.items() if count is not None)
        self.settings: dict[str, Any] = {
            "intra_op_threads": threads or "default",
            "thread_pools_limited": pools,
            "estimator": type(estimator).__name__,
        }
        self._inputs: np.ndarray | None = None
        self._outputs: Any = None

    def bind(self, inputs: np.ndarray) -> None:
        # Estimators take rows of features: an input of shape (N, ...) is flattened per row.
        self._inputs = inputs.reshape(len(inputs), -1)

    def run(self) -> None:
        self._outputs = self._predict(self._inputs)

    def output(self) -> np.ndarray:
        return np.asarray(self._outputs, dtype=np.float32).reshape(len(self._outputs), -1)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None


class SklearnBackend(Backend):
    """The estimator's own ``predict_proba``/``predict``, in its own library."""

    name = "sklearn"
    marker = "sklearn"
    # Which of them moves a case's latency depends on the estimator; all are recorded with it.
    libraries = ("scikit-learn", "xgboost", "xgboost-cpu", "lightgbm", "threadpoolctl")
    requires: ClassVar[tuple[str, ...]] = ("sklearn", "threadpoolctl")
    install_hint = "pip install 'perfgate[classical]'"
    model_kinds = frozenset({CLASSICAL})

    def build(self, request: BuildRequest) -> Artifact:
        start = time.perf_counter()
        # The case's own copy: its n_jobs are set for its threads, never on the session's model.
        estimator = copy.deepcopy(request.model)
        size = MODEL_KINDS[CLASSICAL].weight_bytes(estimator)
        return Artifact(None, size, time.perf_counter() - start, cached=False, payload=estimator)

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> Any:
        from perfgate.profiling import ProfileUnavailable

        raise ProfileUnavailable(
            "an estimator's predict is one library call: scikit-learn, XGBoost and LightGBM expose no "
            "per-operator profile (profile the ONNX Runtime case of the same model for its operators)"
        )

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> EstimatorSession:
        estimator = artifact.payload
        threads = settings.intra_op_threads
        params = _thread_params(estimator)
        if threads is not None and params:
            estimator.set_params(**dict.fromkeys(params, threads))
        session = EstimatorSession(estimator, threads)
        session.settings["n_jobs_params"] = params
        session.settings.update(_library_versions(estimator))
        return session


def _library_versions(estimator: Any) -> dict[str, str]:
    """The version of the library that fitted the estimator (its pipeline's final step's)."""
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    package = type(final).__module__.partition(".")[0]
    distribution = {"sklearn": "scikit-learn"}.get(package, package)
    for name in (distribution, f"{distribution}-cpu"):  # xgboost-cpu installs the xgboost package
        try:
            return {f"{package}_version": importlib.metadata.version(name)}
        except importlib.metadata.PackageNotFoundError:
            continue
    return {}


SKLEARN = SklearnBackend()
