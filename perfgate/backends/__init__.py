"""The backend axis: one module per backend, found through ``BACKENDS``.

A plugin or conftest adds its own with ``BACKENDS.register("name", "pkg.module:BACKEND")``
from the ``pytest_perfgate_register`` hook.
"""

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings, Session, predict
from perfgate.registry import Registry

BACKENDS: Registry[Backend] = Registry("backend")
BACKENDS.register("torch_cpu", "perfgate.backends.torch_eager:TORCH_CPU")
BACKENDS.register("onnxruntime_cpu", "perfgate.backends.onnxruntime:ONNXRUNTIME_CPU")
BACKENDS.register("torch_cuda", "perfgate.backends.torch_eager:TORCH_CUDA")

__all__ = ["BACKENDS", "Artifact", "Backend", "BuildRequest", "RunSettings", "Session", "predict"]
