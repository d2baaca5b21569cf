"""A classical estimator's ONNX graph, for the ONNX-based backends: converted once, validated, cached.

scikit-learn estimators and pipelines convert through skl2onnx; XGBoost and LightGBM estimators
through onnxmltools' converters, registered with skl2onnx so that they convert inside a pipeline
too. The graph gets the shared export's names (``input``, ``output``): the output is a
classifier's probabilities (no ZipMap, no label) or a regressor's predictions, exactly what the
``sklearn`` reference backend returns, so every backend's outputs are compared the same way.

Tree ensembles and linear models become ``ai.onnx.ml`` operators (TreeEnsembleClassifier, Scaler,
LinearClassifier), which ONNX Runtime runs and OpenVINO's and TVM's ONNX importers do not: such a
backend calls :func:`require_standard_operators`, which skips the case naming the operators.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np

from perfgate.backends.base import BuildRequest, error_line, module_installed, skip_case
from perfgate.backends.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportMismatchError,
    ExportTolerance,
    compare_export,
)
from perfgate.cache import CacheHit, stable_hash
from perfgate.model_kinds import CLASSICAL

# onnxmltools' XGBoost and LightGBM converters were written for opsets up to 15 (and ai.onnx.ml 3);
# every graph gets the same, so a model's conversion does not depend on which library fitted it.
OPSET = {"": 15, "ai.onnx.ml": 3}
ML_DOMAIN = "ai.onnx.ml"
# The distributions whose version changes the converted graph: part of the cache key.
CONVERTERS = ("skl2onnx", "onnxmltools", "scikit-learn", "xgboost", "xgboost-cpu", "lightgbm")


# Bump when the conversion's recipe (its options, its renaming) changes: cached graphs follow it.
RECIPE_VERSION = 2
# What the conversion imports: without them, a classical model's ONNX cases are skipped, saying so.
CONVERTER_MODULES = ("skl2onnx", "onnxmltools")


class ConversionError(RuntimeError):
    """The estimator cannot be converted to ONNX; the message names the case and the estimator."""


def is_classifier(estimator: Any) -> bool:
    """Whether the estimator's output is class probabilities (scikit-learn's tags, which XGBoost's
    and LightGBM's classifiers set too), as opposed to a regressor's predictions."""
    from sklearn.base import is_classifier as sklearn_is_classifier

    return bool(sklearn_is_classifier(estimator))


def predict_outputs(estimator: Any, inputs: np.ndarray) -> np.ndarray:
    """What a classical model outputs for perfgate: ``predict_proba`` of a classifier, ``predict`` of
    a regressor as one column, float32 of shape ``(N, outputs)``."""
    if is_classifier(estimator):
        return np.asarray(estimator.predict_proba(inputs), dtype=np.float32)
    return np.asarray(estimator.predict(inputs), dtype=np.float32).reshape(len(inputs), -1)


def _versions() -> dict[str, str]:
    found = {}
    for name in CONVERTERS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def _register_boosters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM estimators that are installed (once per process)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        pass
    else:
        update_registered_converter(
            XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
            convert_xgboost, options=options,
        )  # fmt: skip
        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
        )
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    except ImportError:
        pass
    else:
        update_registered_converter(
            LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
            convert_lightgbm, options=options,
        )  # fmt: skip
        update_registered_converter(
            LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm
        )


def _conversion_options(estimator: Any) -> dict[Any, dict[str, Any]]:
    """Per-step skl2onnx options: probabilities without ZipMap; a StandardScaler as float32 Sub and
    Div, which is what scikit-learn computes on float32 features, bit for bit (the ai.onnx.ml
    Scaler multiplies by 1/scale and differs in the last bit on 38% of digits' values, moving rows
    across a forest's split thresholds), and standard ONNX, so a scaled MLP runs on every backend."""
    from sklearn.preprocessing import StandardScaler

    steps = [estimator, *(step for _, step in getattr(estimator, "steps", []))]
    options: dict[Any, dict[str, Any]] = {}
    for step in steps:
        if isinstance(step, StandardScaler):
            options[id(step)] = {"div": "div"}
    if is_classifier(estimator):
        options[id(estimator)] = {"zipmap": False}
    return options


def _renamed(model: Any, classifier: bool) -> Any:
    """The graph with perfgate's one output, ``output`` (its input is named ``input`` at conversion)."""
    import onnx

    graph = model.graph
    # skl2onnx names a classifier's outputs (label, probabilities) and a regressor's (variable).
    kept = graph.output[1] if classifier else graph.output[0]
    graph.node.append(onnx.helper.make_node("Identity", [kept.name], [OUTPUT_NAME], name="perfgate_output"))
    output = onnx.ValueInfoProto()
    output.CopyFrom(kept)
    output.name = OUTPUT_NAME
    del graph.output[:]
    graph.output.append(output)
    if not any(entry.domain in ("", "ai.onnx") for entry in model.opset_import):
        # A graph of ai.onnx.ml operators only: the Identity above needs the standard domain.
        model.opset_import.append(onnx.helper.make_opsetid("", OPSET[""]))
    return model


def convert_estimator(request: BuildRequest) -> CacheHit:
    """The request's fitted estimator as ONNX with a dynamic batch axis, cached and validated.

    Validated like the torch export: ONNX Runtime, graph rewrites off, against the estimator's own
    outputs on the eval inputs, within ``atol + rtol x`` the output scale.

    :raises ConversionError: no converter knows the estimator (or a step of its pipeline).
    :raises ExportMismatchError: the graph does not compute what the estimator computes.
    """
    for module in CONVERTER_MODULES:
        if not module_installed(module):
            skip_case(
                f"{request.case_id}: {module} is not installed (pip install 'perfgate[classical]'): "
                "a classical model reaches the ONNX backends through its conversion"
            )
    tolerance = request.export_tolerance or ExportTolerance()
    key = stable_hash(
        "onnx-estimator", RECIPE_VERSION, request.model_key, OPSET, _versions(), tolerance.atol, tolerance.rtol
    )
    estimator = request.model

    def build(path: Path) -> None:
        import onnx
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        _register_boosters()
        features = int(np.prod(request.data.sample_shape))
        try:
            model = to_onnx(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, features]))],
                options=_conversion_options(estimator),
                target_opset=OPSET,
            )
        except Exception as exc:  # skl2onnx raises several types for an estimator it cannot convert
            raise ConversionError(
                f"{request.case_id}: {type(estimator).__name__} does not convert to ONNX "
                f"(skl2onnx {error_line(exc)}); "
                "ONNX Runtime and the other ONNX backends cannot run it: leave them out with "
                '[models.NAME] backends = ["sklearn"] in the matrix'
            ) from exc
        onnx.save(_renamed(model, is_classifier(estimator)), str(path))
        inputs = request.data.eval_inputs.reshape(len(request.data.eval_inputs), -1)
        report = compare_export(predict_outputs(estimator, inputs), path, inputs, tolerance)
        path.with_suffix(".validation.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        if report["max_abs_diff"] > report["tolerance"]:
            raise ExportMismatchError(_mismatch(request, report, ml_operators(path)))

    return request.cache.get_or_build("onnx", key, "model.onnx", build)


def _mismatch(request: BuildRequest, report: dict[str, Any], operators: list[str]) -> str:
    """Why the conversion differs: for a tree ensemble on a few rows, its float32 split thresholds."""
    rows, samples = report["rows_beyond"], report["samples"]
    head = (
        f"{request.case_id}: the ONNX conversion differs from the estimator by max abs "
        f"{report['max_abs_diff']:.3g} on {rows} of {samples} eval rows (tolerance {report['atol']:g} + "
        f"{report['rtol']:g} x output scale {report['output_scale']:.4g} = {report['tolerance']:.3g})"
    )
    trees = [op for op in operators if op.startswith("TreeEnsemble")]
    if trees and rows <= max(1, samples // 20):
        model = request.case_id.split("-", 1)[0]
        return (
            f"{head}. {trees[0]} holds its split thresholds in float32 and the estimator in float64: "
            "a row whose feature lies within float32 rounding of a threshold takes the other branch. On "
            "so few rows that is the likely cause, not a wrong conversion; if you accept it, raise "
            f"[models.{model}] export_tolerance atol above {report['max_abs_diff']:.2g}, and the "
            "fp32 cases' accuracy max_abs_diff with it (an [[overrides]] on their ids)"
        )
    return f"{head}; a converter that does not support a parameter of the estimator is the usual cause"


def ml_operators(path: Path) -> list[str]:
    """The ``ai.onnx.ml`` operator types of the graph at ``path``, sorted."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sorted({node.op_type for node in graph.node if node.domain == ML_DOMAIN})


# The operators dynamic INT8 quantizes (onnxruntime.quantization's defaults that carry weights).
QUANTIZABLE = frozenset({"MatMul", "Gemm", "Conv", "Attention", "LSTM", "GRU"})


def _graph_of(request: BuildRequest) -> str:
    """What the graph is, as a skip line names it."""
    return "converted estimator" if request.model_kind == CLASSICAL else "model's ONNX file"


def require_quantizable(request: BuildRequest, path: Path) -> None:
    """Skip a dynamic-INT8 case whose converted graph has no operator with weights to quantize:
    a tree ensemble or a linear model that converted to ai.onnx.ml operators.

    :param request: the case's build request.
    :param path: the converted graph.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if not any(node.op_type in QUANTIZABLE for node in graph.node):
        model = request.case_id.split("-", 1)[0]
        operators = ", ".join(sorted({node.op_type for node in graph.node} - {"Identity"}))
        skip_case(
            f"{request.case_id}: the {_graph_of(request)} has no MatMul, Gemm or Conv whose weights INT8 "
            f"could quantize (its graph: {operators}); leave it out with [models.{model}] exclude = "
            f'["{request.lowering}"]'
        )


def require_standard_operators(request: BuildRequest, path: Path, backend: str) -> None:
    """Skip the case when the converted graph holds ``ai.onnx.ml`` operators, which ``backend``'s
    ONNX importer lacks (OpenVINO, TVM): a tree ensemble's or a linear model's graph.

    :param request: the case's build request.
    :param path: the converted graph.
    :param backend: the backend's name, for the skip line.
    """
    found = ml_operators(path)
    if found:
        model = request.case_id.split("-", 1)[0]
        skip_case(
            f"{request.case_id}: {backend} cannot import the ai.onnx.ml operators {', '.join(found)} of the "
            f'{_graph_of(request)}; leave it out with [models.{model}] exclude = ["{backend}"]'
        )
