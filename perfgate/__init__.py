"""perfgate: a pytest plugin that benchmarks ML inference optimizations and gates them.

Every case of a declarative matrix (model x technique x backend x batch size) is built, checked
for accuracy against its FP32 reference, timed through pytest-benchmark, and compared with the
stored baseline of this runner.
"""

from perfgate.data import ModelData
from perfgate.models import ModelContext
from perfgate.training import TrainConfig, fit, train_classifier

__version__ = "0.1.0"
__all__ = ["ModelContext", "ModelData", "TrainConfig", "__version__", "fit", "train_classifier"]
