"""The data a model is judged and calibrated on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelData:
    """Inputs and labels of one model.

    ``eval_*`` is the held-out set of the accuracy pass; ``train_*`` feeds training and fine-tuning
    (QAT, pruning, distillation); ``calibration`` feeds static quantization. Inputs are float32
    arrays of shape ``(N, ...)``; labels are int64 of shape ``(N,)`` and may be ``None`` for a model
    that is judged only on fidelity to its FP32 reference.
    """

    name: str
    eval_inputs: np.ndarray
    eval_labels: np.ndarray | None = None
    train_inputs: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    calibration: np.ndarray | None = None

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
    def has_labels(self) -> bool:
        return self.eval_labels is not None

    def calibration_set(self, size: int) -> np.ndarray:
        """The first ``size`` calibration inputs (falling back to the training split)."""
        source = self.calibration if self.calibration is not None else self.train_inputs
        if source is None:
            source = self.eval_inputs
        return source[:size]

    def example(self, batch_size: int) -> np.ndarray:
        """A batch of real inputs for timing, repeating the eval set if it is too short."""
        reps = -(-batch_size // len(self.eval_inputs))
        return np.ascontiguousarray(np.concatenate([self.eval_inputs] * reps)[:batch_size])

    def fingerprint(self) -> str:
        """A hash of every array, so that a cache keyed on it follows any change of the data."""
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
