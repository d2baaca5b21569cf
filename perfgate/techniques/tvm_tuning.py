"""``tvm_tuned``: Apache TVM with schedules tuned by meta-schedule, on ``tvm_cpu`` only.

The model is not changed at the torch level; the backend (perfgate/backends/tvm.py) tunes every
fused operator of the compiled model within the ``trials`` budget, measuring each candidate on
this CPU with the case's thread count, then compiles with the best schedules. The tuning
database is cached per model, batch size, target, thread count, budget and TVM version, so the
minutes of tuning are paid once per runner.

Tuning reorders float reductions (split, vectorized), never changes an op: the lossless
tolerances of a conversion apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perfgate.techniques.base import Technique
from perfgate.techniques.runtime import LOSSLESS_ACCURACY
from perfgate.validation import Rule, integer

# The lowering only tvm_cpu declares (perfgate.backends.tvm.TUNED_LOWERING: the backend and
# technique axes never import each other), and the default budget.
TUNED_LOWERING = "tvm_tuned"
DEFAULT_TRIALS = 256


@dataclass(frozen=True)
class TvmTuned(Technique):
    """Meta-schedule tuning of the TVM-compiled model within a budget of measured candidates."""

    lowering: str = TUNED_LOWERING
    devices: frozenset[str] = frozenset({"cpu"})
    runtimes: frozenset[str] | None = frozenset({"tvm"})
    lossless: bool = True
    accuracy: dict[str, float | None] = field(default_factory=lambda: dict(LOSSLESS_ACCURACY))
    default_options: dict[str, Any] = field(default_factory=lambda: {"trials": DEFAULT_TRIALS})
    option_keys: ClassVar[Mapping[str, Rule] | None] = {
        "trials": integer(
            1, hint="candidates measured over all the model's fused operators, an even share each"
        ),
    }


TVM_TUNED = TvmTuned(
    name="tvm_tuned",
    description="Apache TVM with meta-schedule's tuned schedules (database cached per model and target)",
)
