"""perfgate: a pytest plugin that benchmarks ML inference optimizations and gates them.

Every case of a declarative matrix (model x technique x backend x batch size) is built, checked
for accuracy against its FP32 reference, timed through pytest-benchmark, and compared with the
stored baseline of this runner.

Importing perfgate is cheap: pytest loads its plugin in every run of the environment, so the names
below that need torch are imported on first use (PEP 562), not here.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "RunError": "perfgate.api",
    "RunResults": "perfgate.api",
    "build_case": "perfgate.api",
    "run": "perfgate.api",
    "run_case": "perfgate.api",
    "ModelContext": "perfgate.models",
    "ModelData": "perfgate.data",
    "TrainConfig": "perfgate.training",
    "fit": "perfgate.training",
    "fit_estimator": "perfgate.estimators",
    "train_classifier": "perfgate.training",
}
__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'perfgate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
