"""INT8 quantization techniques: dynamic, static (PTQ with calibration) and QAT.

The torch-level part of a technique lives here (QAT's fine-tune, in :mod:`perfgate.techniques.qat_fx`);
what each runtime does with the model (its lowering) lives in the backend's module. The static
techniques' ``calibration`` option is parsed once, when the matrix loads, into the
:class:`perfgate.calibration.Calibration` that every backend reads from its build request, so that
every backend calibrates on the same data the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perfgate.cache import stable_hash
from perfgate.techniques.base import EVERY_KIND, GRAPH_KINDS, Technique, TransformContext
from perfgate.validation import Rule, integer, number

# MLPerf's rule (keep 99% of FP32 top-1) stays the gate. Agreement and SQNR are floors that a
# well-calibrated, per-channel INT8 model clears with room (measured: docs/techniques.md); they
# catch a broken lowering on a model whose top-1 alone would hide it.
INT8_ACCURACY: dict[str, float | None] = {
    "min_relative_metric": 0.99,
    "min_top1_agreement": 0.97,
    "min_sqnr_db": 15.0,
}


INT8_DYNAMIC = Technique(
    name="int8_dynamic",
    description="INT8 weights, activations quantized at run time (torch.ao / onnxruntime.quantization)",
    lowering="int8_dynamic",
    family="quantized",
    # A classical model's converted graph quantizes where it has MatMul/Gemm (an MLP, a linear
    # model converted to them); a tree ensemble has none, and the technique-effect gate says so.
    model_kinds=EVERY_KIND,
    accuracy=dict(INT8_ACCURACY),
    size_reducing=True,
)


@dataclass(frozen=True)
class StaticInt8(Technique):
    """Post-training static INT8: per-channel weights, activation ranges from a calibration set.

    The model is not changed at the torch level: each backend calibrates and quantizes in its own
    toolchain (FX graph mode in torch, ``quantize_static`` in ONNX Runtime, NNCF in OpenVINO), all
    from the same :class:`perfgate.calibration.Calibration`. One class, one instance per default calibration method, so
    that the methods are separate rows of the matrix.
    """

    lowering: str = "int8_static"
    family: str | None = "quantized"
    size_reducing: bool = True
    accuracy: dict[str, float | None] = field(default_factory=lambda: dict(INT8_ACCURACY))


def _static(name: str, method: str) -> StaticInt8:
    return StaticInt8(
        name=name,
        description=f"static INT8 PTQ, {method} calibration on 256 training images, per-channel weights",
        default_options={"calibration": {"method": method, "size": 256}},
        model_kinds=GRAPH_KINDS,  # ONNX Runtime and OpenVINO quantize an ONNX file's graph too
    )


INT8_STATIC = _static("int8_static", "minmax")
INT8_STATIC_ENTROPY = _static("int8_static_entropy", "entropy")
INT8_STATIC_PERCENTILE = _static("int8_static_percentile", "percentile")


@dataclass(frozen=True)
class QuantizationAwareTraining(Technique):
    """Fake-quantize the FP32 model (FX graph mode) and fine-tune it briefly on the training split.

    The transform returns the fine-tuned fake-quant model (float in, float out, with the learned
    scales in it), cached by :meth:`transform_key`. Backends lower it with ``int8_qat``: torch
    converts it to real INT8 modules, ONNX Runtime and OpenVINO get its QDQ ONNX export.

    Options: ``epochs``, ``lr`` (a tenth of the zoo's training rate: the weights are already
    trained, the fine-tune only adapts them to the rounding), ``frozen_epochs`` (the last epochs,
    run with quantization ranges and BatchNorm statistics fixed, as in torch's QAT recipe) and
    ``max_shift`` (the augmentation's translation, in pixels).
    """

    lowering: str = "int8_qat"
    family: str | None = "quantized"
    size_reducing: bool = True
    # No SQNR floor: the fine-tune moves the weights, so the logits leave FP32's on purpose (as
    # after pruning); what QAT must keep is the task metric and the predictions.
    accuracy: dict[str, float | None] = field(default_factory=lambda: {**INT8_ACCURACY, "min_sqnr_db": None})
    option_keys: ClassVar[Mapping[str, Rule] | None] = {
        "epochs": integer(1, hint="fine-tune epochs in all"),
        "lr": number(0, low_open=True, hint="the fine-tune's learning rate"),
        "frozen_epochs": integer(0, hint="the last epochs, with ranges and BatchNorm frozen"),
        "max_shift": integer(0, hint="the augmentation's translation, in pixels"),
    }

    def transform(self, model: Any, ctx: TransformContext) -> Any:
        """Return the fine-tuned fake-quant model, from the cache when it was trained before."""
        import numpy as np
        import torch

        from perfgate.techniques import qat_fx
        from perfgate.techniques.finetune import require_labels

        require_labels(ctx, self.name)
        data = ctx.data
        options = {**self.default_options, **ctx.options}
        example = torch.from_numpy(np.ascontiguousarray(data.training_split()[0][:1]))
        prepared = qat_fx.prepare_qat(copy.deepcopy(model), example)
        key = stable_hash(ctx.model_key, self.transform_key(options), data.fingerprint())

        def train(path: Any) -> None:
            ctx.progress(f"{ctx.model_name}: QAT fine-tune ({options['epochs']} epochs, cached afterwards)")
            progress = lambda line: ctx.progress(f"{ctx.model_name} qat: {line}")  # noqa: E731
            qat_fx.fine_tune_qat(prepared, data, options, progress)
            torch.save(prepared.state_dict(), path)

        hit = ctx.cache.get_or_build(
            "qat", key, "qat.pt", train, load=lambda p: torch.load(p, weights_only=True)
        )
        if hit.cached:
            prepared.load_state_dict(hit.value)
        return qat_fx.freeze_qat(prepared)

    def transform_key(self, options: dict[str, Any]) -> str | None:
        import torch

        from perfgate.techniques import qat_fx

        merged = {**self.default_options, **options}
        return stable_hash("qat", merged, qat_fx.RECIPE_VERSION, torch.__version__)


QAT = QuantizationAwareTraining(
    name="qat",
    description="quantization-aware fine-tune (3 epochs) from the FP32 weights, then INT8",
    default_options={"epochs": 3, "lr": 3e-4, "frozen_epochs": 1, "max_shift": 1},
)
