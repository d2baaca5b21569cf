"""LiteRT (TFLite) on the CPU with the XNNPACK delegate, converted from torch by litert-torch.

The conversion (``litert_torch.convert``) traces the torch model at the case's batch size: a
LiteRT interpreter has static shapes, so each batch size is its own cached ``.tflite``. The
runtime is ``ai_edge_litert``'s interpreter, or ``tflite_runtime``'s when only that one is
installed; its default op resolver applies XNNPACK to every op it supports, and the session
records whether a delegate node was created. The input is copied into the interpreter's tensor
once, in ``bind``; the timed ``run`` is a bare ``invoke()``.

Lowerings:

- ``none``: FP32, a lossless conversion.
- ``int8_dynamic``: litert-torch's PT2E quantizer with its dynamic config (per-channel INT8
  weights); the converter lowers it to TFLite's dynamic-range kernels, which quantize
  activations on the fly.
- ``int8_static``: full-integer INT8. The PT2E quantizer (per-channel symmetric INT8 weights,
  per-tensor INT8 activations) is calibrated on the technique's calibration set and the converter
  emits INT8 kernels end to end, with an INT8 input and output. A full-integer model is fed
  quantized data in deployment, so the input is quantized with the model's input scale in
  ``bind`` (outside the timed call) and the output dequantized in ``output``. Calibration:
  ``minmax`` uses a MinMax observer and ``entropy`` the quantizer's default HistogramObserver (a
  histogram search that minimises the L2 quantization error; LiteRT has no KL-entropy
  observer). ``percentile`` is skipped with its reason: neither litert-torch nor torchao's PT2E
  ships a percentile observer, and perfgate does not write its own.
- ``fp16``: TFLite's float16 post-training quantization (litert-torch's ``full_fp16_recipe``
  through ai-edge-quantizer): FP16 weights, half the size, dequantized at load. XNNPACK computes
  in FP32 on x86; FP16 arithmetic needs an ARM CPU with FP16 (``neon`` + fp16).

Not listed, hence never generated: ``int8_qat`` (the QAT model carries torch.ao FX fake-quant
modules, which litert-torch's exporter does not lower; QAT for LiteRT would need PT2E QAT from the
start) and ``bf16`` (TFLite has no BF16 inference on the CPU).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from perfgate.backends.base import (
    Artifact,
    Backend,
    BuildRequest,
    RunSettings,
    import_problem,
    module_installed,
    require_import,
    skip_case,
)
from perfgate.cache import CacheHit, stable_hash
from perfgate.jsonio import dumps_stable

RUNTIMES = ("ai_edge_litert", "tflite_runtime")  # preferred first
CONVERTER_RECIPE_VERSION = 2  # bump when the conversion or quantization recipe changes


@contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence litert-torch's and torch.export's warnings during a conversion.

    They are the converter's own deprecation notes; under ``filterwarnings = error`` they would
    fail the case for something only the converter can fix.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def interpreter_class() -> Any:
    """The LiteRT interpreter class: ``ai_edge_litert``'s, else ``tflite_runtime``'s."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


def activation_observer(method: str) -> tuple[Any, str] | None:
    """The PT2E activation observer for a calibration method, or ``None`` when LiteRT has none.

    :param method: perfgate's calibration method (``minmax``, ``entropy`` or ``percentile``).
    """
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver

    observers = {
        "minmax": (MinMaxObserver, "MinMaxObserver"),
        "entropy": (HistogramObserver, "HistogramObserver"),
    }
    return observers.get(method)


def pt2e_quantizer(dynamic: bool, observer: Any = None) -> Any:
    """litert-torch's PT2E quantizer, per-channel symmetric INT8 weights.

    :param dynamic: dynamic-range (weights only, activations at run time) or static.
    :param observer: the activation observer class of a static config; the quantizer's default
        (HistogramObserver) when ``None``.
    """
    import dataclasses

    from litert_torch.quantize import pt2e_quantizer as pq

    config = pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if observer is not None:
        spec = dataclasses.replace(
            config.input_activation, observer_or_fake_quant_ctr=observer.with_args(eps=2**-12)
        )
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    return pq.PT2EQuantizer().set_global(config)


def quantize_pt2e(request: BuildRequest, quantizer: Any, batches: list[np.ndarray]) -> Any:
    """Export, annotate, calibrate and convert the model with a PT2E quantizer.

    :param request: the case's build request.
    :param quantizer: the PT2E quantizer.
    :param batches: calibration inputs (of two samples or more); a dynamic config still needs one
        pass for its weight observers.
    """
    import torch
    from torchao.quantization.pt2e import quantize_pt2e as pt2e

    # A dynamic batch axis while calibrating, so that calibration runs in big batches; the
    # converter traces the quantized graph again at the case's static batch size.
    batch_dim = torch.export.Dim("batch", min=1, max=1024)
    traced = torch.from_numpy(batches[0])  # torch.export specializes a batch of 1: trace a bigger one
    exported = torch.export.export(request.model, (traced,), dynamic_shapes=({0: batch_dim},)).module()
    prepared = pt2e.prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in batches:
            prepared(torch.from_numpy(batch))
    return pt2e.convert_pt2e(prepared, fold_quantize=False)


def convert(request: BuildRequest, path: Path) -> dict[str, Any]:
    """Convert the request's model to a ``.tflite`` at ``path`` with its lowering; return its info.

    :param request: the case's build request.
    :param path: where the flatbuffer goes.
    """
    require_import(request.case_id, "litert_torch")
    import litert_torch
    import torch
    from litert_torch.quantize import quant_config

    example = torch.from_numpy(request.data.example(request.batch_size))
    model, config, info = request.model, None, {}
    if request.lowering == "int8_dynamic":
        quantizer = pt2e_quantizer(dynamic=True)
        model = quantize_pt2e(request, quantizer, [request.data.example(2)])
        config = quant_config.QuantConfig(pt2e_quantizer=quantizer)
    elif request.lowering == "int8_static":
        calibration = request.require_calibration()
        chosen = activation_observer(calibration.method)
        assert chosen is not None, "_convert skips a case whose method has no observer"
        observer, observer_name = chosen
        quantizer = pt2e_quantizer(dynamic=False, observer=observer)
        model = quantize_pt2e(request, quantizer, calibration.batches(request.data))
        config = quant_config.QuantConfig(pt2e_quantizer=quantizer)
        info = {"calibration": calibration.to_dict(), "activation_observer": observer_name}
    elif request.lowering == "fp16":
        from litert_torch.generative.quantize import quant_recipes

        config = quant_recipes.full_fp16_recipe()
        info = {"weights": "fp16"}
    litert_torch.convert(model, (example,), quant_config=config).export(str(path))
    return info


# Compute ops with weights, and the index of their weight tensor (an LSTM's input-to-forget
# weights: the input-to-input ones are optional).
TFLITE_WEIGHT_INPUT = {
    "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "CONV_3D": 1, "TRANSPOSE_CONV": 1, "FULLY_CONNECTED": 1,
    "BATCH_MATMUL": 1, "UNIDIRECTIONAL_SEQUENCE_LSTM": 2, "BIDIRECTIONAL_SEQUENCE_LSTM": 2,
    "LSTM": 2, "UNIDIRECTIONAL_SEQUENCE_RNN": 1, "RNN": 1, "SVDF": 1,
}  # fmt: skip
TFLITE_LOW_BIT = frozenset({"int8", "uint8", "int4"})


def count_tflite_ops(path: Path) -> dict[str, int]:
    """Count the compute ops of a ``.tflite`` whose weights are INT8 and those left float.

    A weight tensor that a ``DEQUANTIZE`` op produces counts as the tensor it dequantizes: FP16
    weights are float, INT8 ones quantized. The converter unrolls a GRU into one
    FULLY_CONNECTED per time step, so a recurrent layer counts once per step.

    :param path: the flatbuffer the session runs.
    """
    # Without allocate_tensors: the op and tensor tables are read from the flatbuffer as is,
    # and no delegate replaces them yet.
    interpreter = interpreter_class()(model_path=str(path))
    # The interpreter has no public listing of its ops; without this private one, unknown.
    details = getattr(interpreter, "_get_ops_details", None)
    if details is None:
        return {}
    ops = [op for op in details() if op["op_name"] != "DELEGATE"]
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    dequantized = {
        out: op["inputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE" for out in op["outputs"]
    }
    counts = {"quantized_ops": 0, "float_ops": 0}
    for op in ops:
        index = TFLITE_WEIGHT_INPUT.get(op["op_name"])
        if index is None or index >= len(op["inputs"]) or op["inputs"][index] < 0:
            continue
        weight = op["inputs"][index]
        weight = dequantized.get(weight, weight)
        counts["quantized_ops" if dtypes.get(weight) in TFLITE_LOW_BIT else "float_ops"] += 1
    return counts


class LiteRtSession:
    """A LiteRT interpreter; ``bind`` fills its input tensor once, ``run`` is ``invoke()``."""

    needs_sync = False

    def __init__(self, interpreter: Any, settings: dict[str, Any]) -> None:
        self.interpreter = interpreter
        self.settings = settings
        self._input = interpreter.get_input_details()[0]
        self._output = interpreter.get_output_details()[0]

    def bind(self, inputs: np.ndarray) -> None:
        self.interpreter.set_tensor(self._input["index"], quantize_input(inputs, self._input))

    def run(self) -> None:
        self.interpreter.invoke()

    def output(self) -> np.ndarray:
        return dequantize_output(self.interpreter.get_tensor(self._output["index"]), self._output)

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.interpreter = None


def quantize_input(inputs: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float inputs as the tensor ``detail`` takes them: as is, or INT8 with its scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype == inputs.dtype:
        return inputs
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(inputs / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(outputs: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor in float32, dequantized with its scale and zero point if it is integer."""
    if np.issubdtype(outputs.dtype, np.floating):
        return outputs.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    return (outputs.astype(np.float32) - zero_point) * scale


class LiteRtCpuBackend(Backend):
    """LiteRT's interpreter with XNNPACK, on a model litert-torch converts at the case's batch size."""

    name = "litert_cpu"
    marker = "litert"
    libraries = ("ai-edge-litert", "tflite-runtime")
    requires = ("litert_torch",)
    install_hint = "pip install 'perfgate[edge]'"
    lowerings = frozenset({"none", "int8_dynamic", "int8_static", "fp16"})

    def missing(self) -> str | None:
        """Why LiteRT cannot run here: the converter or both runtimes are absent."""
        reason = super().missing()
        if reason is not None:
            return reason
        installed = [module for module in RUNTIMES if module_installed(module)]
        if not installed:
            return f"{self.name}: ai_edge_litert (or tflite_runtime) is not installed ({self.install_hint})"
        problems = [import_problem(f"{module}.interpreter") for module in installed]
        if all(problems):  # interpreter_class() falls back on the next runtime when one fails
            return f"{self.name}: {problems[0]}"
        return None

    def build(self, request: BuildRequest) -> Artifact:
        hit, info = self._convert(request)
        return Artifact(
            path=hit.path,
            size_bytes=hit.path.stat().st_size,
            build_s=hit.build_s,
            cached=hit.cached,
            info={"lowering": request.lowering, **info},
        )

    def _convert(self, request: BuildRequest) -> tuple[CacheHit, dict[str, Any]]:
        from importlib.metadata import version

        import torch

        calibration = None
        if request.lowering == "int8_static":
            calibration = request.require_calibration()
            if activation_observer(calibration.method) is None:
                skip_case(
                    f"{request.case_id}: LiteRT has no {calibration.method} calibration "
                    "(litert-torch's PT2E quantizer offers minmax and entropy-like histogram observers)"
                )
        data_key = calibration.to_dict() if calibration else None
        key = stable_hash(
            "litert", request.model_key, request.lowering, request.batch_size, data_key,
            request.data.fingerprint() if calibration else None,
            version("litert-torch"), torch.__version__, CONVERTER_RECIPE_VERSION,
        )  # fmt: skip
        info: dict[str, Any] = {}

        def build(path: Path) -> None:
            with quiet_converter():
                info.update(convert(request, path))
            path.with_name("conversion.json").write_text(dumps_stable(info))

        hit = request.cache.get_or_build("litert", key, "model.tflite", build)
        record = hit.path.with_name("conversion.json")
        if not info and record.exists():
            info = _load_json(record)
        return hit, info

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> Any:
        from perfgate.profiling import ProfileUnavailable

        raise ProfileUnavailable(
            "LiteRT's Python interpreter offers no per-operator profiler (its C++ benchmark_model tool "
            "has one: benchmark_model --graph=<the case's .tflite> --enable_op_profiling=true)"
        )

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> LiteRtSession:
        interpreter_type = interpreter_class()
        interpreter = interpreter_type(model_path=str(artifact.path), num_threads=settings.intra_op_threads)
        interpreter.allocate_tensors()
        # The interpreter has no public listing of its execution plan; a missing one reads as unknown.
        details = getattr(interpreter, "_get_ops_details", None)
        ops = {op["op_name"] for op in details()} if details else set()
        recorded = {
            "num_threads": settings.intra_op_threads or "default",
            "xnnpack": "DELEGATE" in ops if details else "unknown",
            "runtime": interpreter_type.__module__.split(".")[0],
            "runtime_version": _runtime_version(),
            **{k: v for k, v in artifact.info.items() if k != "lowering"},
        }
        return LiteRtSession(interpreter, recorded)

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """Quantized and float compute ops of the ``.tflite`` (see :func:`count_tflite_ops`).

        :param artifact: what ``build`` returned; its path is the flatbuffer.
        """
        return count_tflite_ops(artifact.path) if artifact.path is not None else {}


def _runtime_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("ai-edge-litert", "tflite-runtime"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "unknown"


def _load_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


LITERT_CPU = LiteRtCpuBackend()
