"""The data a model is judged and calibrated on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where an array is made: importing the axes stays cheap
    import numpy as np


class CalibrationDataError(ValueError):
    """A static quantization needs calibration data that the model's data set does not provide."""


@dataclass(frozen=True)
class ModelData:
    """Inputs and labels of one model.

    ``eval_*`` is the held-out set of the accuracy pass; ``train_*`` feeds training and fine-tuning
    (QAT, pruning, distillation); ``calibration`` feeds static quantization. Inputs are float32
    arrays of shape ``(N, ...)``; labels are int64 of shape ``(N,)`` and may be ``None`` for a model
    that is judged only on fidelity to its FP32 reference.

    A data set without a calibration or a training split can calibrate only on its eval inputs,
    which fits the quantization ranges to the very data that judges them; that is an error unless
    ``calibrate_on_eval`` opts in (``calibrate_on_eval = true`` in the matrix's ``[models.NAME]``).
    """

    name: str
    eval_inputs: np.ndarray
    eval_labels: np.ndarray | None = None
    train_inputs: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    calibration: np.ndarray | None = None
    calibrate_on_eval: bool = False

    def __post_init__(self) -> None:
        if self.eval_inputs.ndim < 2 or len(self.eval_inputs) == 0:
            raise ValueError(f"{self.name}: eval_inputs must be a non-empty batch of shape (N, ...)")
        if self.eval_labels is not None and len(self.eval_labels) != len(self.eval_inputs):
            raise ValueError(
                f"{self.name}: {len(self.eval_labels)} eval labels for {len(self.eval_inputs)} eval inputs"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input, without the batch dimension."""
        return tuple(self.eval_inputs.shape[1:])

    @property
    def calibration_source(self) -> str:
        """Which split calibrates: ``"calibration"``, else ``"train"``, else ``"eval"``.

        ``"eval"`` is only a fact about the data; :meth:`calibration_set` refuses it unless
        ``calibrate_on_eval`` is set.
        """
        if self.calibration is not None:
            return "calibration"
        if self.train_inputs is not None:
            return "train"
        return "eval"

    def calibration_set(self, size: int) -> np.ndarray:
        """The first ``size`` calibration inputs, falling back to the training split.

        :param size: how many inputs at most.
        :raises CalibrationDataError: when there is neither a calibration nor a training split and
            ``calibrate_on_eval`` is not set.
        """
        if self.calibration is not None:
            return self.calibration[:size]
        if self.train_inputs is not None:
            return self.train_inputs[:size]
        if not self.calibrate_on_eval:
            raise CalibrationDataError(
                f"data set {self.name!r} has no calibration or training split, so static quantization "
                "would calibrate on the eval inputs it is judged on. Add calibration= (or "
                "train_inputs=) to its ModelData, or opt in with calibrate_on_eval = true in the "
                "model's [models.NAME] table of the matrix."
            )
        return self.eval_inputs[:size]

    def training_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The training inputs and their labels.

        :raises ValueError: when the data set has no labelled training split.
        """
        if self.train_inputs is None or self.train_labels is None:
            raise ValueError(f"data set {self.name!r} has no labelled training split")
        return self.train_inputs, self.train_labels

    def example(self, batch_size: int) -> np.ndarray:
        """A batch of real inputs for timing, repeating the eval set if it is too short."""
        import numpy as np

        reps = -(-batch_size // len(self.eval_inputs))
        return np.ascontiguousarray(np.concatenate([self.eval_inputs] * reps)[:batch_size])

    def fingerprint(self) -> str:
        """A hash of every array, so that a cache keyed on it follows any change of the data."""
        # ``calibrate_on_eval`` is deliberately not hashed: it never changes what calibrates, only
        # whether calibrating on the eval inputs is allowed. With a calibration or training split it
        # has no effect; without one, the run without it raises and caches nothing, and the run with
        # it calibrates on the eval inputs, which are hashed below. So every cached artifact already
        # follows its calibration data, and hashing the flag would only throw away cached training
        # and fine-tuning artifacts (keyed on this fingerprint too) when a matrix toggles it.
        import numpy as np

        digest = hashlib.sha256(self.name.encode())
        for array in (
            self.eval_inputs,
            self.eval_labels,
            self.train_inputs,
            self.train_labels,
            self.calibration,
        ):
            if array is not None:
                digest.update(str(array.shape).encode() + str(array.dtype).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()[:16]
