"""The backend axis: one module per backend, found through ``BACKENDS``.

A plugin or conftest adds its own with ``BACKENDS.register("name", "pkg.module:BACKEND")``
from the ``pytest_perfgate_register`` hook.
"""

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings, Session, predict
from perfgate.registry import Registry

BACKENDS: Registry[Backend] = Registry("backend")
BACKENDS.register("torch_cpu", "perfgate.backends.torch_eager:TORCH_CPU", reference=True)
BACKENDS.register("onnxruntime_cpu", "perfgate.backends.onnxruntime:ONNXRUNTIME_CPU")
BACKENDS.register("torch_compile_cpu", "perfgate.backends.torch_compile:TORCH_COMPILE_CPU")
BACKENDS.register("openvino_cpu", "perfgate.backends.openvino:OPENVINO_CPU")
BACKENDS.register("openvino_cpu_throughput", "perfgate.backends.openvino:OPENVINO_CPU_THROUGHPUT")
BACKENDS.register("litert_cpu", "perfgate.backends.litert:LITERT_CPU")
BACKENDS.register("torch_cuda", "perfgate.backends.torch_cuda:TORCH_CUDA")
BACKENDS.register("torch_compile_cuda", "perfgate.backends.torch_cuda:TORCH_COMPILE_CUDA")
BACKENDS.register(
    "torch_compile_cuda_reduce_overhead", "perfgate.backends.torch_cuda:TORCH_COMPILE_CUDA_REDUCE_OVERHEAD"
)
BACKENDS.register(
    "torch_compile_cuda_max_autotune", "perfgate.backends.torch_cuda:TORCH_COMPILE_CUDA_MAX_AUTOTUNE"
)
BACKENDS.register("torch_cuda_graphs", "perfgate.backends.torch_cuda:TORCH_CUDA_GRAPHS")
BACKENDS.register("onnxruntime_cuda", "perfgate.backends.onnxruntime_gpu:ONNXRUNTIME_CUDA")
BACKENDS.register("onnxruntime_tensorrt", "perfgate.backends.onnxruntime_gpu:ONNXRUNTIME_TENSORRT")
BACKENDS.register("tensorrt", "perfgate.backends.tensorrt:TENSORRT")


def reference_backend() -> str:
    """The backend every variant's outputs and speedup are measured against: the one registered
    with ``reference=True`` (``torch_cpu``). Knowing it imports no backend module."""
    if BACKENDS.reference is None:
        raise LookupError("no backend is registered with reference=True")
    return BACKENDS.reference


__all__ = [
    "BACKENDS",
    "Artifact",
    "Backend",
    "BuildRequest",
    "RunSettings",
    "Session",
    "predict",
    "reference_backend",
]
