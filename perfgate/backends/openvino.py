"""OpenVINO on the CPU, converted from the shared ONNX export, in two variants.

``openvino_cpu`` is the latency configuration: ``PERFORMANCE_HINT=LATENCY`` and one synchronous
``InferRequest`` whose input tensor shares memory with the bound numpy array, so that the timed
``run()`` is a bare ``infer()`` and measures OpenVINO, not Python's data dispatch.

``openvino_cpu_throughput`` is the throughput configuration: ``PERFORMANCE_HINT=THROUGHPUT`` and
an ``AsyncInferQueue`` of as many requests as OpenVINO finds optimal (one per stream). Its timed
unit is one *round*: every request of the queue is started on one batch and the round ends when
all of them are done. A round therefore processes ``requests x batch_size`` samples; the session
records ``batches_per_run`` in its settings, and throughput is that many batches over the round's
time. Its latency percentiles are those of a round, i.e. the time a burst of ``requests`` batches
takes to drain, which is what a server with that many requests in flight sees. With one
intra-op thread (the suite's default) OpenVINO makes one stream, the queue holds one request and
the two variants time the same thing; the difference shows with more threads.

Lowerings, all on the same ONNX export:

- ``none``: FP32 IR, inference precision forced to f32. OpenVINO's CPU plugin otherwise runs
  in bf16 by default on CPUs with AVX512-BF16 or AMX, which is a lossy transform, not a
  conversion.
- ``int8_static``: NNCF post-training quantization of the OpenVINO model, calibrated on the
  technique's calibration set (needs ``nncf``, in the ``cpu`` extra). ``minmax`` and
  ``percentile`` map to NNCF's range estimators of those names; NNCF has no KL-entropy
  estimator, so ``entropy`` uses NNCF's histogram search (the range that minimises the
  quantization error over a 2048-bin histogram, as torch's HistogramObserver does). The settings
  record which estimator ran.
- ``int8_qat``: the QAT model's ONNX export carries QuantizeLinear/DequantizeLinear pairs with
  the learned scales; OpenVINO folds them into INT8 kernels, so the export is converted as is.
- ``fp16``: FP16-compressed weights and ``INFERENCE_PRECISION_HINT=f16``. On a CPU without FP16
  arithmetic (AVX512-FP16 or AMX-FP16) OpenVINO silently runs such a model in bf16 or f32; the
  case is then skipped, naming the precision the CPU would really have used.
- ``bf16``: ``INFERENCE_PRECISION_HINT=bf16``, skipped likewise where the CPU lacks
  AVX512-BF16 or AMX.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings, error_line, skip_case
from perfgate.backends.onnx_export import export_onnx
from perfgate.cache import CacheHit, dir_size_bytes, stable_hash
from perfgate.jsonio import dumps_stable
from perfgate.model_kinds import CLASSICAL, ONNX, TORCH
from perfgate.profiling import OperatorProfile, profiled_runs

# Lowering -> the inference precision it asks of the CPU plugin.
PRECISIONS = {"none": "f32", "int8_static": "f32", "int8_qat": "f32", "fp16": "f16", "bf16": "bf16"}
IR_RECIPE_VERSION = 3  # bump when the conversion or quantization recipe changes


def nncf_range_estimator(method: str, percentile: float) -> tuple[Any, str]:
    """NNCF's activation range estimator for a calibration method, and its name for the settings.

    :param method: ``minmax``, ``entropy`` or ``percentile`` (perfgate's calibration methods).
    :param percentile: the percentile the ``percentile`` method keeps.
    """
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if method == "minmax":
        return RangeEstimatorParametersSet.MINMAX, "MINMAX"
    if method == "entropy":
        return RangeEstimatorParametersSet.HISTOGRAM, "HISTOGRAM (NNCF has no KL-entropy estimator)"
    outlier = (100.0 - percentile) / 100.0

    def quantile(aggregator: Any) -> StatisticsCollectorParameters:
        return StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE, aggregator_type=aggregator, quantile_outlier_prob=outlier
        )

    # NNCF takes the quantile per calibration sample; averaging those (its QUANTILE preset) clips
    # every sample's rare large activations (digits_mobilenet: SQNR 14.8 dB against MinMax's
    # 29.6). The extreme over samples of each sample's quantile is what a percentile of the
    # pooled calibration distribution means: only each sample's own outliers are dropped.
    estimator = RangeEstimatorParameters(min=quantile(AggregatorType.MIN), max=quantile(AggregatorType.MAX))
    return estimator, f"QUANTILE per sample, extreme over samples (outlier prob {outlier:g})"


def is_transformer(model: Any) -> bool:
    """Whether an OpenVINO model has attention (a Softmax), for NNCF's transformer scheme."""
    return any(op.get_type_name() == "Softmax" for op in model.get_ops())


def quantize_nncf(model: Any, request: BuildRequest) -> tuple[Any, dict[str, Any]]:
    """Static INT8 of an OpenVINO model with NNCF, calibrated on the technique's calibration set.

    Each calibration item is one sample: NNCF's statistics assume batch size 1.

    :param model: the FP32 ``openvino.Model``.
    :param request: the case's build request (data and technique options).
    """
    import nncf

    calibration = request.require_calibration()
    samples = np.ascontiguousarray(request.data.calibration_set(calibration.size))
    estimator, estimator_name = nncf_range_estimator(calibration.method, calibration.percentile)
    transformer = is_transformer(model)
    quantized = nncf.quantize(
        model,
        nncf.Dataset([samples[i : i + 1] for i in range(len(samples))]),
        preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        subset_size=len(samples),
        # Full bias correction: NNCF's fast variant took digits_resnet's SQNR from 32 dB to 13 dB.
        fast_bias_correction=False,
        advanced_parameters=nncf.AdvancedQuantizationParameters(activations_range_estimator_params=estimator),
    )
    info = {
        "calibration": calibration.to_dict(),
        "nncf_range_estimator": estimator_name,
        "nncf_model_type": "transformer" if transformer else "default",
        "nncf_version": nncf.__version__,
    }
    return quantized, info


def _calibration_key(request: BuildRequest) -> Any:
    """What an INT8-static IR depends on beyond the export: the calibration options and data."""
    if request.lowering != "int8_static":
        return None
    import nncf

    return [request.require_calibration().to_dict(), request.data.fingerprint(), nncf.__version__]


def convert_ir(request: BuildRequest, onnx_path: Path) -> tuple[CacheHit, dict[str, Any]]:
    """Convert (and for ``int8_static`` quantize) the ONNX export to an OpenVINO IR, cached.

    :param request: the case's build request.
    :param onnx_path: the shared ONNX export.
    """
    import openvino as ov

    compress = request.lowering == "fp16"  # FP16 weights on disk only where FP16 is asked for
    key = stable_hash(
        "openvino-ir",
        onnx_path.parent.name,
        compress,
        _calibration_key(request),
        ov.__version__,
        IR_RECIPE_VERSION,
    )
    info: dict[str, Any] = {}

    def build(path: Path) -> None:
        model = ov.convert_model(str(onnx_path))
        if request.lowering == "int8_static":
            model, quantization = quantize_nncf(model, request)
            info.update(quantization)
            path.with_name("quantization.json").write_text(dumps_stable(quantization))
        ov.save_model(model, str(path), compress_to_fp16=compress)

    hit = request.cache.get_or_build("openvino", key, "model.xml", build)
    record = hit.path.with_name("quantization.json")
    if not info and record.exists():
        info = _load_json(record)
    return hit, info


def _load_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# Compute ops with weights, and the index of their weight input (a recurrent op's W).
OV_WEIGHT_INPUT = {
    "Convolution": 1, "GroupConvolution": 1, "ConvolutionBackpropData": 1,
    "GroupConvolutionBackpropData": 1, "MatMul": 1, "GRUSequence": 3, "RNNSequence": 3,
    "LSTMSequence": 4, "GRUCell": 2, "RNNCell": 2, "LSTMCell": 3,
}  # fmt: skip
# What lies between a weight constant and its op: NNCF's decompression (Convert, Subtract,
# Multiply) and the layout ops the converter adds (a grouped conv's Reshape, a Transpose).
OV_WEIGHT_PATH_OPS = frozenset({
    "Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Broadcast",
})  # fmt: skip
OV_LOW_BIT = frozenset({"i8", "u8", "i4", "u4"})


def count_ir_ops(path: Path) -> dict[str, int]:
    """Count the compute ops of an OpenVINO IR whose weights are INT8 and those left float.

    A weight input is followed up through :data:`OV_WEIGHT_PATH_OPS`; it is quantized when it
    comes through a ``FakeQuantize`` (NNCF's marks, or converted ONNX Q/DQ pairs) or from an
    INT8/INT4 constant (NNCF's compressed weights), float otherwise: an f32/f16 constant, or an
    activation (an attention MatMul without quantizers).

    :param path: the IR's ``.xml`` (its ``.bin`` beside it).
    """
    import openvino as ov

    counts = {"quantized_ops": 0, "float_ops": 0}
    for op in ov.Core().read_model(str(path)).get_ordered_ops():
        index = OV_WEIGHT_INPUT.get(op.get_type_name())
        if index is not None and index < op.get_input_size():
            quantized = _low_bit_source(op.input_value(index).get_node())
            counts["quantized_ops" if quantized else "float_ops"] += 1
    return counts


def _low_bit_source(node: Any) -> bool:
    """Whether ``node`` is, or passes on, a FakeQuantize's output or a low-bit constant."""
    pending, seen = [node], set()
    while pending:
        node = pending.pop()
        if node.get_name() in seen:  # shared subexpressions: visit each node once
            continue
        seen.add(node.get_name())
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant" and node.get_output_element_type(0).get_type_name() in OV_LOW_BIT:
            return True
        if kind in OV_WEIGHT_PATH_OPS:
            # Every input: a decompression Multiply holds the weights on one side and the scale
            # on the other, and which side is the converter's choice.
            pending.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return False


class OpenVinoLatencySession:
    """One synchronous request; its input tensor wraps the bound array, so ``run`` copies nothing."""

    needs_sync = False

    def __init__(self, compiled: Any, settings: dict[str, Any]) -> None:
        self.compiled = compiled
        self.settings = settings
        self.request = compiled.create_infer_request()
        self._inputs: np.ndarray | None = None

    def bind(self, inputs: np.ndarray) -> None:
        import openvino as ov

        self._inputs = inputs  # keep the array alive: the tensor points at its memory
        self.request.set_input_tensor(ov.Tensor(inputs, shared_memory=True))

    def run(self) -> None:
        self.request.infer()

    def output(self) -> np.ndarray:
        return self.request.get_output_tensor().data

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.request = None
        self.compiled = None


class OpenVinoThroughputSession:
    """An ``AsyncInferQueue``: ``run`` starts every request on the bound batch and waits for all."""

    needs_sync = False

    def __init__(self, compiled: Any, settings: dict[str, Any]) -> None:
        import openvino as ov

        self.compiled = compiled
        self.queue = ov.AsyncInferQueue(compiled, 0)  # 0: OpenVINO's optimal number of requests
        self.settings = {**settings, "infer_requests": len(self.queue), "batches_per_run": len(self.queue)}
        self._inputs: np.ndarray | None = None

    def bind(self, inputs: np.ndarray) -> None:
        import openvino as ov

        self._inputs = inputs
        tensor = ov.Tensor(inputs, shared_memory=True)  # read-only: every request may share it
        for index in range(len(self.queue)):
            self.queue[index].set_input_tensor(tensor)

    def run(self) -> None:
        for _ in range(len(self.queue)):
            self.queue.start_async()
        self.queue.wait_all()

    def output(self) -> np.ndarray:
        return self.queue[0].get_output_tensor().data

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.queue = None
        self.compiled = None


class OpenVinoCpuBackend(Backend):
    """OpenVINO's CPU plugin under one performance hint."""

    marker = "openvino"
    libraries = ("openvino",)
    requires = ("openvino", "onnx", "onnxruntime")  # the shared ONNX export is validated with ORT
    install_hint = "pip install 'perfgate[cpu]'"
    lowerings = frozenset(PRECISIONS)
    # A classical estimator whose converted graph is standard ONNX (a scaled MLP); one with
    # ai.onnx.ml operators (trees, linear models) is skipped at build, naming them.
    model_kinds = frozenset({TORCH, CLASSICAL, ONNX})
    sessions: ClassVar[dict[str, type]] = {
        "LATENCY": OpenVinoLatencySession,
        "THROUGHPUT": OpenVinoThroughputSession,
    }

    def __init__(self, name: str, hint: str) -> None:
        self.name = name  # type: ignore[misc]  # one class, several registered instances
        self.hint = hint

    def missing(self) -> str | None:
        """Why OpenVINO cannot run here: not installed, or no CPU device in this OpenVINO."""
        reason = super().missing()
        if reason is not None:
            return reason
        try:
            devices = available_devices()
        except Exception as exc:  # a Core that cannot start (a plugin library missing)
            return f"{self.name}: OpenVINO's Core fails to list its devices: {error_line(exc)}"
        if "CPU" not in devices:
            return f"{self.name}: OpenVINO sees no CPU device (available: {', '.join(devices) or 'none'})"
        return None

    def build(self, request: BuildRequest) -> Artifact:
        if request.lowering == "int8_static":
            _require_nncf(request.case_id)
        onnx = export_onnx(request)
        if request.model_kind != TORCH:  # a converted estimator, or a user's ONNX file
            from perfgate.backends.estimator_onnx import require_standard_operators

            require_standard_operators(request, onnx.path, self.name)
        ir, info = convert_ir(request, onnx.path)
        return Artifact(
            path=ir.path,
            size_bytes=dir_size_bytes(ir.path) + dir_size_bytes(ir.path.with_suffix(".bin")),
            build_s=onnx.build_s + ir.build_s,
            cached=onnx.cached and ir.cached,
            info={"lowering": request.lowering, "onnx": str(onnx.path), **info},
        )

    def config(self, request: BuildRequest, settings: RunSettings) -> dict[str, Any]:
        """The CPU plugin's configuration of a case: its hint, its precision, its threads."""
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": self.hint,
            "INFERENCE_PRECISION_HINT": PRECISIONS[request.lowering],
        }
        if settings.intra_op_threads is not None:
            config["INFERENCE_NUM_THREADS"] = settings.intra_op_threads
        return config

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> Any:
        import openvino as ov

        wanted = PRECISIONS[request.lowering]
        compiled = ov.Core().compile_model(str(artifact.path), "CPU", self.config(request, settings))
        actual = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if actual != wanted:  # the CPU plugin falls back silently; a bf16 run is no fp16 result
            skip_case(
                f"{request.case_id}: this CPU has no {wanted} arithmetic; OpenVINO would run it in {actual}"
            )
        recorded = {
            "performance_hint": self.hint,
            "num_streams": int(compiled.get_property("NUM_STREAMS")),
            "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "inference_precision": actual,
            "openvino_version": ov.get_version(),
            **{k: v for k, v in artifact.info.items() if k not in ("lowering", "onnx")},
        }
        return self.sessions[self.hint](compiled, recorded)

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        """OpenVINO's ``PERF_COUNT`` on a model compiled with it (it is set at compile time): each
        executed layer's real time per call, named ``<layer> (<type>, <kernel>)``, summed over the
        calls of one synchronous request; the per-layer table in ``folder``."""
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(artifact.path), "CPU", {**self.config(request, settings), "PERF_COUNT": True}
        )
        infer = compiled.create_infer_request()
        infer.set_input_tensor(ov.Tensor(inputs, shared_memory=True))
        infer.infer()  # the first call's lazy work is not the model's time
        totals: dict[str, float] = {}

        def call() -> None:
            infer.infer()
            for info in infer.get_profiling_info():  # the last call's layers
                if str(info.status).endswith("EXECUTED") and not str(info.status).endswith("NOT_RUN"):
                    key = f"{info.node_name} ({info.node_type}, {info.exec_type})"
                    totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1e6

        runs = profiled_runs(call)
        operators = {key: total / runs for key, total in totals.items()}
        table = folder / "openvino_layers.txt"
        ranked = sorted(operators.items(), key=lambda item: -item[1])
        table.write_text("".join(f"{us:12.3f} us  {name}\n" for name, us in ranked))
        return OperatorProfile("openvino PERF_COUNT", runs, operators, [str(table)])

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """Quantized and float compute ops of the IR that runs (see :func:`count_ir_ops`).

        :param artifact: what ``build`` returned; its path is the IR's ``.xml``.
        """
        return count_ir_ops(artifact.path) if artifact.path is not None else {}


@functools.lru_cache(maxsize=1)
def available_devices() -> tuple[str, ...]:
    """OpenVINO's devices on this machine, asked once per process (a Core is not free)."""
    import openvino as ov

    return tuple(ov.Core().available_devices)


def _require_nncf(case_id: str) -> None:
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        skip_case(
            f"{case_id}: nncf is not installed (pip install 'perfgate[cpu]'), OpenVINO's INT8 PTQ needs it"
        )


OPENVINO_CPU = OpenVinoCpuBackend("openvino_cpu", "LATENCY")
OPENVINO_CPU_THROUGHPUT = OpenVinoCpuBackend("openvino_cpu_throughput", "THROUGHPUT")
