"""How static INT8 collects activation ranges: the ``calibration`` option, parsed once.

Below both axes: a technique with an ``int8_static`` lowering declares the option's rule, the
matrix loader parses it into a :class:`Calibration` when the file loads (a typo is a matrix
error), and every backend that calibrates reads it from ``BuildRequest.calibration``, so that
all of them calibrate on the same data the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from perfgate.validation import choice, integer, number, table

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The lowering whose techniques take a ``calibration`` option.
CALIBRATED_LOWERING = "int8_static"

CALIBRATION_RULE = table(
    "how static INT8 collects activation ranges",
    method=choice(*CALIBRATION_METHODS, hint="how activation ranges are chosen"),
    size=integer(1, hint="calibration samples, from the training split"),
    # Each side keeps ``percentile`` of the values: at or below 50 the two clipping points cross.
    percentile=number(50, 100, low_open=True, hint="kept by the percentile method, e.g. 99.999"),
    batch_size=integer(1, hint="samples per calibration batch"),
)


@dataclass(frozen=True)
class Calibration:
    """How static INT8 collects activation ranges, shared by every backend that calibrates.

    :param method: ``minmax`` (observed range), ``entropy`` (histogram search for the range that
        keeps the quantized distribution closest to the float one) or ``percentile`` (clip the
        observed range to ``percentile`` of the values, dropping outliers).
    :param size: calibration samples, drawn from the training split, never the eval set.
    :param percentile: the percentile kept by the ``percentile`` method.
    :param batch_size: samples per calibration batch (memory only; the ranges do not depend on it).
    """

    method: str = "minmax"
    size: int = 256
    percentile: float = 99.999
    batch_size: int = 32

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Calibration:
        """Read and validate ``options["calibration"]`` (a table in the matrix file).

        :param options: a case's technique options, the technique's defaults merged in.
        :raises perfgate.validation.SettingError: an unknown key, or a value of the wrong type or
            range; its key is ``calibration.<key>``.
        """
        table = dict(options.get("calibration", {}))
        CALIBRATION_RULE.check("calibration", table)
        return cls(**table)

    def batches(self, data: Any) -> list[Any]:
        """The calibration set of ``data`` (a :class:`perfgate.data.ModelData`), in numpy batches."""
        import numpy as np

        inputs = np.ascontiguousarray(data.calibration_set(self.size))
        return [inputs[start : start + self.batch_size] for start in range(0, len(inputs), self.batch_size)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
