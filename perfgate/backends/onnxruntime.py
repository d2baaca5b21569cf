"""ONNX Runtime with the CPU execution provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from perfgate.cache import CacheHit, dir_size_bytes, stable_hash
from perfgate.model_kinds import CLASSICAL, ONNX, TORCH
from perfgate.profiling import OperatorProfile, profiled_runs


def quantize_dynamic_onnx(request: BuildRequest, fp32: Path) -> CacheHit:
    """INT8 weights, activations quantized at run time (onnxruntime.quantization)."""
    import onnxruntime

    key = stable_hash("ort-int8-dynamic", fp32.parent.name, onnxruntime.__version__)

    def build(path: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)

    return request.cache.get_or_build("onnx-int8-dynamic", key, "model.onnx", build)


def _calibration_reader(batches: list[np.ndarray]) -> Any:
    """A CalibrationDataReader over ``batches`` (built here: the base class needs onnxruntime)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


def quantize_static_onnx(request: BuildRequest, fp32: Path) -> CacheHit:
    """Static INT8 in QDQ format: per-channel weights, activation ranges from the calibration set.

    S8S8 (signed activations and weights) is ONNX Runtime's recommended QDQ setting on x86: with
    VNNI it has no u8s8 saturation and its accuracy is the best of the 8-bit choices. The model is
    pre-processed first (shape inference and graph optimization), so that the quantizer sees the
    fused graph ONNX Runtime will run and places Q/DQ pairs where kernels can use them.
    """
    import onnxruntime

    calibration = request.require_calibration()
    key = stable_hash("ort-int8-static", fp32.parent.name, calibration.to_dict(), onnxruntime.__version__)

    def build(path: Path) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        prepared = path.with_name("preprocessed.onnx")
        quant_pre_process(str(fp32), str(prepared))
        batches = calibration.batches(request.data)
        if calibration.method != "minmax" and len({len(batch) for batch in batches}) > 1:
            # The histogram calibrators (entropy, percentile) stack every batch's outputs into one
            # array, and a short last batch (124 rows in batches of 32) fails as "inhomogeneous";
            # one batch holds the same rows, and they keep every batch's outputs in memory anyway.
            batches = [np.concatenate(batches)]
        quantize_static(
            str(prepared),
            str(path),
            _calibration_reader(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[calibration.method],
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"CalibPercentile": calibration.percentile},
        )
        prepared.unlink()

    return request.cache.get_or_build("onnx-int8-static", key, "model.onnx", build)


def convert_fp16_onnx(request: BuildRequest, fp32: Path) -> CacheHit:
    """FP16 weights and compute, FP32 inputs and outputs (onnxconverter-common)."""
    import onnx

    key = stable_hash("ort-fp16", 2, fp32.parent.name, onnx.__version__, _version("onnxconverter-common"))

    def build(path: Path) -> None:
        import warnings

        from onnxconverter_common import float16

        with warnings.catch_warnings():
            # It reports each weight below FP16's smallest normal that it flushes: expected in FP16.
            warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
            # keep_io_types: callers keep feeding and reading float32; the casts sit in the graph.
            converted = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(_cast_to_fp16(converted), str(path))

    return request.cache.get_or_build("onnx-fp16", key, "model.onnx", build)


def _cast_to_fp16(model: Any) -> Any:
    """Retarget the graph's own ``Cast(to=float)`` nodes to float16 and drop stale value_info.

    The converter leaves them casting to float32 (attention's ``head_dim ** -0.5``, computed from
    the input's shape, is one), so a float32 scalar meets a float16 tensor and ONNX Runtime refuses
    the graph. Casts on the graph's inputs and outputs are the ``keep_io_types`` ones and stay.
    """
    import onnx

    io = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "Cast" and not (set(node.input) | set(node.output)) & io:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == onnx.TensorProto.FLOAT:
                    attribute.i = onnx.TensorProto.FLOAT16
    del model.graph.value_info[:]  # recorded before the retargeting; ONNX Runtime infers anew
    return model


def _version(distribution: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# What each lowering does after the export. ``int8_qat`` needs nothing more: the export of a
# fake-quant model already is the QDQ graph, with the scales the fine-tune learned.
LOWERINGS: dict[str, Callable[[BuildRequest, Path], CacheHit] | None] = {
    "none": None,
    "int8_dynamic": quantize_dynamic_onnx,
    "int8_static": quantize_static_onnx,
    "int8_qat": None,
    "fp16": convert_fp16_onnx,
}


# Nodes that compute in integer arithmetic on INT8 (or narrower) weights: the QOperator and
# dynamic-quantization ops, ONNX's and ONNX Runtime's contrib ones.
ONNX_QUANTIZED_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeLSTM", "QGemm",
    "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits",
})  # fmt: skip
# Float compute nodes with weights (input 1: Conv's W, MatMul's and Gemm's B, an RNN's W), and
# the fused forms ONNX Runtime's optimizer writes when a graph is saved after optimization.
ONNX_FLOAT_OPS = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "GRU", "LSTM", "RNN", "Attention",
    "FusedConv", "FusedMatMul", "FusedGemm",
})  # fmt: skip


def count_onnx_ops(path: Path) -> dict[str, int]:
    """Count the compute nodes of an ONNX graph that run on INT8 weights and those left float.

    Quantized: the integer ops of :data:`ONNX_QUANTIZED_OPS`, and in a QDQ graph a float compute
    node whose weight (input 1) is a ``DequantizeLinear`` output, which ONNX Runtime fuses into
    an INT8 kernel. Float: every other node of :data:`ONNX_FLOAT_OPS`. Subgraphs (``If``,
    ``Loop``, ``Scan`` bodies) count too.

    :param path: the ``.onnx`` file the session runs.
    """
    import onnx

    # The weights' bytes are not needed, only the graph: external data stays on disk.
    nodes = list(_all_nodes(onnx.load(str(path), load_external_data=False).graph))
    dequantized = {out for node in nodes if node.op_type == "DequantizeLinear" for out in node.output}
    counts = {"quantized_ops": 0, "float_ops": 0}
    for node in nodes:
        if node.op_type in ONNX_QUANTIZED_OPS:
            counts["quantized_ops"] += 1
        elif node.op_type in ONNX_FLOAT_OPS:
            qdq = len(node.input) > 1 and node.input[1] in dequantized
            counts["quantized_ops" if qdq else "float_ops"] += 1
    return counts


def _all_nodes(graph: Any) -> Iterator[Any]:
    """The graph's nodes, then those of every subgraph attribute, depth first."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_nodes(subgraph)


def node_times(trace: Path, runs: int) -> dict[str, float]:
    """Each node's kernel time per call from an ONNX Runtime profile: its ``Node`` events named
    ``<node>_kernel_time``, summed and divided by ``runs``, keyed ``<node> (<op type>)``."""
    import json

    totals: dict[str, float] = {}
    suffix = "_kernel_time"
    for event in json.loads(trace.read_text()):
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(suffix):
            continue
        op = (event.get("args") or {}).get("op_name", "?")
        key = f"{name[: -len(suffix)]} ({op})"
        totals[key] = totals.get(key, 0.0) + float(event.get("dur", 0))
    return {key: total / runs for key, total in totals.items()}


class OrtSession:
    """An InferenceSession whose feed is built once, outside the timed call.

    The timed call is the plain ``InferenceSession.run`` on host arrays. Its Python wrapper is
    the cheapest public path on the CPU: ``run_with_iobinding`` measured 23 us slower per call
    on digits_resnet (97 against 75 us at 1 thread; 113 against 92 at ORT's default threads),
    ``run_with_ort_values`` 24 us slower. Device-resident bindings live in the GPU subclass.
    """

    needs_sync = False

    def __init__(self, session: Any, settings: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.session = session
        self.settings = settings
        self._run_options = ort.RunOptions()
        self._output_names = [OUTPUT_NAME]
        self._feed: dict[str, np.ndarray] = {}
        self._outputs: list[Any] = []

    def bind(self, inputs: np.ndarray) -> None:
        self._feed = {INPUT_NAME: inputs}

    def run(self) -> None:
        self._outputs = self.session.run(self._output_names, self._feed, self._run_options)

    def output(self) -> np.ndarray:
        return self._outputs[0]

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.session = None


class OnnxRuntimeCpuBackend(Backend):
    """ONNX Runtime, CPU execution provider, all graph optimizations on."""

    name = "onnxruntime_cpu"
    marker = "onnxruntime"
    libraries = ("onnxruntime", "onnxruntime-gpu")
    requires: ClassVar[tuple[str, ...]] = ("onnxruntime", "onnx")
    install_hint = "pip install 'perfgate[cpu]'"
    lowerings = frozenset(LOWERINGS)
    providers = ("CPUExecutionProvider",)
    # A classical estimator's converted graph too (ai.onnx.ml operators included), and an ONNX file.
    model_kinds = frozenset({TORCH, CLASSICAL, ONNX})

    def build(self, request: BuildRequest) -> Artifact:
        steps = [export_onnx(request)]
        if request.model_kind != TORCH and request.lowering == "int8_dynamic":
            from perfgate.backends.estimator_onnx import require_quantizable

            require_quantizable(request, steps[0].path)
        lower = LOWERINGS[request.lowering]
        if lower is not None:
            steps.append(lower(request, steps[0].path))
        return Artifact(
            path=steps[-1].path,
            size_bytes=dir_size_bytes(steps[-1].path),
            build_s=sum(step.build_s for step in steps),
            cached=all(step.cached for step in steps),
            info={"lowering": request.lowering, "onnx": str(steps[0].path)},
        )

    def session_options(self, settings: RunSettings) -> Any:
        """The SessionOptions every session of a case is made with: all rewrites, its threads."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if settings.intra_op_threads is not None:
            options.intra_op_num_threads = settings.intra_op_threads
        if settings.inter_op_threads is not None:
            options.inter_op_num_threads = settings.inter_op_threads
        return options

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> OrtSession:
        import onnxruntime as ort

        options = self.session_options(settings)
        session = ort.InferenceSession(str(artifact.path), options, providers=list(self.providers))
        return OrtSession(
            session,
            {
                "intra_op_threads": settings.intra_op_threads or "default",
                "inter_op_threads": settings.inter_op_threads or "default",
                "providers": session.get_providers(),
                "onnxruntime_version": ort.__version__,
            },
        )

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        """ONNX Runtime's own session profiling on a session of its own (profiling is set at load):
        each node's kernel time per call, named ``<node> (<op type>)``; its JSON trace in ``folder``."""
        import onnxruntime as ort

        options = self.session_options(settings)
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "onnxruntime")
        profiled = ort.InferenceSession(str(artifact.path), options, providers=list(self.providers))
        feed = {INPUT_NAME: inputs}
        profiled.run([OUTPUT_NAME], feed)  # its first call is profiled too, and counted
        runs = 1 + profiled_runs(lambda: profiled.run([OUTPUT_NAME], feed))
        trace = Path(profiled.end_profiling())
        return OperatorProfile("onnxruntime", runs, node_times(trace, runs), [str(trace.resolve())])

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """Quantized and float compute nodes of the graph that runs (see :func:`count_onnx_ops`).

        :param artifact: what ``build`` returned; its path is the lowered ``.onnx``.
        """
        return count_onnx_ops(artifact.path) if artifact.path is not None else {}


ONNXRUNTIME_CPU = OnnxRuntimeCpuBackend()
