"""The ONNX export that the ONNX Runtime, OpenVINO and TensorRT backends share, validated once."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfgate.backends.base import BuildRequest
from perfgate.cache import CacheHit, stable_hash
from perfgate.model_kinds import CLASSICAL, ONNX

OPSET = 17
# A fake-quant (QAT) model exports to Q/DQ pairs. Its float ops differ from torch's by ~1e-7, and a
# value that lands on a rounding boundary then moves by one quantization step, so no max-abs
# bound holds. A faithful export still matches almost every output value exactly and every
# prediction but a few; a wrong one (a scale, a zero point, a missing op) moves nearly all of them.
QDQ_MIN_EXACT_FRACTION = 0.9
QDQ_MIN_TOP1_AGREEMENT = 0.99
INPUT_NAME, OUTPUT_NAME = "input", "output"
# Below this difference relative to the output scale, a mismatch is float32 rounding (eps 1.2e-7,
# times the depth of the graph), not a wrong op: the message says so instead of blaming an op.
ROUNDING_RELATIVE = 1e-4


@dataclass(frozen=True)
class ExportTolerance:
    """How far the exported graph may differ from torch: ``atol + rtol x`` the output scale.

    The output scale is the largest absolute torch output on the eval inputs, so the bound means
    the same for logits near 10 and a regressor's outputs in the hundreds, where one float32 ULP
    is already 3e-5. A model overrides it with ``export_tolerance = { atol = ..., rtol = ... }``
    in its ``[models.NAME]`` table.
    """

    atol: float = 1e-5
    rtol: float = 1e-5

    def limit(self, scale: float) -> float:
        return self.atol + self.rtol * scale


class ExportMismatchError(RuntimeError):
    """The exported graph does not compute what the torch model computes."""


def export_onnx(request: BuildRequest) -> CacheHit:
    """Export the request's model to ONNX with a dynamic batch axis, cached and validated.

    A classical estimator (``request.model_kind``) is converted by skl2onnx/onnxmltools instead
    (perfgate.backends.estimator_onnx), and an ONNX file is copied (perfgate.backends.onnx_file),
    both to the same names, so every ONNX backend runs any of them.
    """
    if request.model_kind == CLASSICAL:
        from perfgate.backends.estimator_onnx import convert_estimator

        return convert_estimator(request)
    if request.model_kind == ONNX:
        from perfgate.backends.onnx_file import prepare_onnx_file

        return prepare_onnx_file(request)
    tolerance = request.export_tolerance or ExportTolerance()
    key = stable_hash("onnx", request.model_key, OPSET, torch.__version__, asdict(tolerance))

    def build(path: Path) -> None:
        example = torch.from_numpy(request.data.example(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours to fix
            _export_noting(
                lambda: torch.onnx.export(
                    request.model,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
            )
        report = validate_export(request.model, path, request.data.eval_inputs, tolerance)
        path.with_suffix(".validation.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        if report["fake_quant"]:
            exact, agreement = report["exact_fraction"], report["top1_agreement"]
            if exact < QDQ_MIN_EXACT_FRACTION or agreement < QDQ_MIN_TOP1_AGREEMENT:
                raise ExportMismatchError(
                    f"{request.case_id}: the QDQ export of the fake-quant model matches torch on only "
                    f"{report['exact_fraction']:.1%} of output values (need {QDQ_MIN_EXACT_FRACTION:.0%}) "
                    f"and {report['top1_agreement']:.1%} of predictions (need {QDQ_MIN_TOP1_AGREEMENT:.0%})"
                )
        elif report["max_abs_diff"] > report["tolerance"]:
            raise ExportMismatchError(mismatch_message(request.case_id, report))

    return request.cache.get_or_build("onnx", key, "model.onnx", build)


def _export_noting(export: Any) -> None:
    """Run ``export`` with its standard output held back (on failure the exporter prints its whole
    IR graph, from C++); if it fails, the output is attached to the error, which the report shows."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)
        try:
            export()
        except Exception as exc:
            sys.stdout.flush()
            held.seek(0)
            printed = held.read().decode(errors="replace").strip()
            if printed and sys.version_info >= (3, 11):  # Python 3.10 has no notes: the error alone
                exc.add_note(printed)
            raise
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def validate_export(
    model: torch.nn.Module, path: Path, inputs: np.ndarray, tolerance: ExportTolerance | None = None
) -> dict[str, Any]:
    """Run the export with ONNX Runtime (no graph rewrites) and compare with torch.

    :param model: the torch model that was exported.
    :param path: the exported ``.onnx`` file.
    :param inputs: the eval inputs both are run on.
    :param tolerance: the allowed difference; the default :class:`ExportTolerance` if ``None``.
    """
    with torch.inference_mode():
        reference = model(torch.from_numpy(inputs)).float().numpy()
    report = compare_export(reference, path, inputs, tolerance)
    return {**report, "fake_quant": has_fake_quant(model)}


def compare_export(
    reference: np.ndarray, path: Path, inputs: np.ndarray, tolerance: ExportTolerance | None = None
) -> dict[str, Any]:
    """Run the ONNX graph at ``path`` with ONNX Runtime (no graph rewrites) and compare it with
    ``reference``, the source model's outputs on the same ``inputs``.

    :returns: the largest difference, the tolerance it is held to (``atol + rtol x`` the output
        scale), the fraction of output values within it, and the top-1 agreement.
    """
    import onnxruntime as ort

    tolerance = tolerance or ExportTolerance()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    exported = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    diff = np.abs(exported - reference)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    limit = tolerance.limit(scale)
    beyond = diff.reshape(len(diff), -1) > limit
    return {
        "max_abs_diff": float(np.max(diff)),
        "samples": len(inputs),
        "rows_beyond": int(np.sum(np.any(beyond, axis=1))),
        "output_scale": scale,
        "tolerance": limit,
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
        "exact_fraction": float(np.mean(diff <= limit)),
        "top1_agreement": float(np.mean(exported.argmax(-1) == reference.argmax(-1))),
    }


def mismatch_message(case_id: str, report: dict[str, Any], source: str = "torch") -> str:
    """Why an export failed its check: the tolerance used, and the likely cause for this size of difference.

    :param case_id: the case whose build exported the model.
    :param report: what :func:`validate_export` (or :func:`compare_export`) returned.
    :param source: what the export was compared with, as the message names it.
    """
    diff, scale = report["max_abs_diff"], report["output_scale"]
    head = (
        f"{case_id}: the ONNX export differs from {source} by max abs {diff:.3g} on the eval inputs "
        f"(tolerance {report['atol']:g} + {report['rtol']:g} x output scale {scale:.4g} = {report['tolerance']:.3g})"
    )
    if scale > 0 and diff / scale < ROUNDING_RELATIVE:
        return (
            f"{head}; that is {diff / scale:.2g} of the output scale, float32 rounding rather than a "
            "wrong op: raise export_tolerance.rtol in the model's [models.NAME] table if it is expected"
        )
    return f"{head}; an unsupported op or a train-mode layer is the usual cause"


def has_fake_quant(model: torch.nn.Module) -> bool:
    """Whether ``model`` simulates quantization (QAT), so that its export is a QDQ graph."""
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(module, FakeQuantizeBase) for module in model.modules())
