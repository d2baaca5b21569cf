"""The backend axis: one module per backend, found through ``BACKENDS``.

A plugin or conftest adds its own with ``BACKENDS.register("name", "pkg.module:BACKEND")``
from the ``pytest_perfgate_register`` hook.
"""

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings, Session, predict
from perfgate.model_kinds import MODEL_KINDS, TORCH
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
BACKENDS.register("tvm_cpu", "perfgate.backends.tvm:TVM_CPU")
BACKENDS.register("sklearn", "perfgate.backends.sklearn:SKLEARN")


def reference_backend(kind: str = TORCH) -> str:
    """The backend a model's variants are judged and sped up against: for a torch model the one
    registered with ``reference=True`` (``torch_cpu``), for another kind the one it names
    (perfgate.model_kinds: ``sklearn`` for a classical estimator). Imports no backend module."""
    named = MODEL_KINDS[kind].reference_backend
    if named is not None:
        return named
    if BACKENDS.reference is None:
        raise LookupError("no backend is registered with reference=True")
    return BACKENDS.reference


def reference_backends() -> set[str]:
    """Every kind's reference backend: in one model's group of cases, only its own kind's appears."""
    return {reference_backend(kind) for kind in MODEL_KINDS}


__all__ = [
    "BACKENDS",
    "Artifact",
    "Backend",
    "BuildRequest",
    "RunSettings",
    "Session",
    "predict",
    "reference_backend",
    "reference_backends",
]
