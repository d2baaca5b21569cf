"""ONNX Runtime with the CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.cache import CacheHit, dir_size_bytes, stable_hash
from perfgate.export import INPUT_NAME, OUTPUT_NAME, export_onnx


def quantize_dynamic_onnx(request: BuildRequest, fp32: Path) -> CacheHit:
    """INT8 weights, activations quantized at run time (onnxruntime.quantization)."""
    import onnxruntime

    key = stable_hash("ort-int8-dynamic", fp32.parent.name, onnxruntime.__version__)

    def build(path: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)

    return request.cache.get_or_build("onnx-int8-dynamic", key, "model.onnx", build)


class OrtSession:
    """An InferenceSession whose input and output buffers are bound once, outside the timed call."""

    needs_sync = False

    def __init__(self, session: Any, settings: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.session = session
        self.settings = settings
        self._binding = session.io_binding()
        self._run_options = ort.RunOptions()
        self._inputs: np.ndarray | None = None

    def bind(self, inputs: np.ndarray) -> None:
        self._inputs = inputs  # keep the array alive: the binding points at its memory
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._binding.bind_cpu_input(INPUT_NAME, inputs)
        self._binding.bind_output(OUTPUT_NAME, "cpu")

    def run(self) -> None:
        self.session.run_with_iobinding(self._binding, self._run_options)

    def output(self) -> np.ndarray:
        return self._binding.copy_outputs_to_cpu()[0]

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        self.session = None


class OnnxRuntimeCpuBackend(Backend):
    """ONNX Runtime, CPU execution provider, all graph optimizations on."""

    name = "onnxruntime_cpu"
    marker = "onnxruntime"
    requires = ("onnxruntime", "onnx")
    install_hint = "pip install 'perfgate[cpu]'"
    lowerings = frozenset({"none", "int8_dynamic"})
    providers = ("CPUExecutionProvider",)

    def build(self, request: BuildRequest) -> Artifact:
        steps = [export_onnx(request)]
        if request.lowering == "int8_dynamic":
            steps.append(quantize_dynamic_onnx(request, steps[0].path))
        return Artifact(
            path=steps[-1].path,
            size_bytes=dir_size_bytes(steps[-1].path),
            build_s=sum(step.build_s for step in steps),
            cached=all(step.cached for step in steps),
            info={"lowering": request.lowering, "onnx": str(steps[0].path)},
        )

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> OrtSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if settings.intra_op_threads is not None:
            options.intra_op_num_threads = settings.intra_op_threads
        if settings.inter_op_threads is not None:
            options.inter_op_num_threads = settings.inter_op_threads
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


ONNXRUNTIME_CPU = OnnxRuntimeCpuBackend()
