"""The ONNX export that ONNX Runtime, OpenVINO and TensorRT cases share, validated once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfgate.backends.base import BuildRequest
from perfgate.cache import CacheHit, stable_hash

OPSET = 17
EXPORT_TOLERANCE = 1e-5  # max abs diff between torch and the exported graph, on the eval inputs
# A fake-quant (QAT) model exports to Q/DQ pairs. Its float ops differ from torch's by ~1e-7, and a
# value that lands on a rounding boundary then moves by one quantization step, so no max-abs
# bound holds. A faithful export still matches almost every output value exactly and every
# prediction but a few; a wrong one (a scale, a zero point, a missing op) moves nearly all of them.
QDQ_MIN_EXACT_FRACTION = 0.9
QDQ_MIN_TOP1_AGREEMENT = 0.99
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportMismatchError(RuntimeError):
    """The exported graph does not compute what the torch model computes."""


def export_onnx(request: BuildRequest) -> CacheHit:
    """Export the request's model to ONNX with a dynamic batch axis, cached and validated."""
    key = stable_hash("onnx", request.model_key, OPSET, torch.__version__)

    def build(path: Path) -> None:
        example = torch.from_numpy(request.data.example(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours to fix
            torch.onnx.export(
                request.model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        report = validate_export(request.model, path, request.data.eval_inputs)
        path.with_suffix(".validation.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        if report["fake_quant"]:
            exact, agreement = report["exact_fraction"], report["top1_agreement"]
            if exact < QDQ_MIN_EXACT_FRACTION or agreement < QDQ_MIN_TOP1_AGREEMENT:
                raise ExportMismatchError(
                    f"{request.case_id}: the QDQ export of the fake-quant model matches torch on only "
                    f"{report['exact_fraction']:.1%} of output values (need {QDQ_MIN_EXACT_FRACTION:.0%}) "
                    f"and {report['top1_agreement']:.1%} of predictions (need {QDQ_MIN_TOP1_AGREEMENT:.0%})"
                )
        elif report["max_abs_diff"] > EXPORT_TOLERANCE:
            raise ExportMismatchError(
                f"{request.case_id}: the ONNX export differs from torch by max abs "
                f"{report['max_abs_diff']:.3g} on the eval inputs (tolerance {EXPORT_TOLERANCE:g}); "
                "an unsupported op or a train-mode layer is the usual cause"
            )

    return request.cache.get_or_build("onnx", key, "model.onnx", build)


def validate_export(model: torch.nn.Module, path: Path, inputs: np.ndarray) -> dict[str, Any]:
    """Run the export with ONNX Runtime (no graph rewrites) and compare with torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    exported = session.run(None, {INPUT_NAME: inputs})[0]
    with torch.inference_mode():
        reference = model(torch.from_numpy(inputs)).float().numpy()
    diff = np.abs(exported - reference)
    return {
        "max_abs_diff": float(np.max(diff)),
        "samples": len(inputs),
        "tolerance": EXPORT_TOLERANCE,
        "fake_quant": has_fake_quant(model),
        "exact_fraction": float(np.mean(diff <= EXPORT_TOLERANCE)),
        "top1_agreement": float(np.mean(exported.argmax(-1) == reference.argmax(-1))),
    }


def has_fake_quant(model: torch.nn.Module) -> bool:
    """Whether ``model`` simulates quantization (QAT), so that its export is a QDQ graph."""
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(module, FakeQuantizeBase) for module in model.modules())
