"""ONNX Runtime on CUDA: the CUDA execution provider and the TensorRT execution provider.

Both run the shared ONNX export (``perfgate.backends.onnx_export``) through IO binding with device-resident
OrtValues, so that the timed ``run_with_iobinding`` does no host-device copy; with
``copies_timed`` the inputs and outputs are bound on the CPU instead and ONNX Runtime copies them
inside the timed call. Each session runs on its own CUDA stream (``user_compute_stream``), the
one its CUDA events are recorded on.

The TensorRT provider builds its engines into a folder of perfgate's artifact cache, keyed by GPU,
compute capability, TensorRT and ONNX Runtime versions, model and lowering; ``build()`` creates a
first session to fill it, so that the engine build is reported as build time and a warm run only
deserialises.

onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` module: only one of them may be
in an environment (the ``gpu`` extra, never with the ``cpu`` extra).

Unverified on GPU hardware: written against the documented provider options and IO-binding API,
not yet run on a GPU (docs/gpu.md, "Not yet verified on GPU hardware").
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from perfgate.backends.base import Artifact, BuildRequest, RunSettings
from perfgate.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from perfgate.backends.onnxruntime import OnnxRuntimeCpuBackend, OrtSession
from perfgate.backends.torch_cuda import gpu_missing
from perfgate.cache import CacheHit, dir_size_bytes, stable_hash
from perfgate.cuda_timing import CudaEventTimer, copies_timed
from perfgate.model_kinds import TORCH

GPU_INSTALL_HINT = "pip install 'perfgate[gpu]' in an environment without onnxruntime (CPU)"


def profile_shapes(batch_size: int, sample_shape: tuple[int, ...]) -> dict[str, str]:
    """TensorRT provider options fixing the optimization profile to the case's batch size.

    Explicit shapes make the provider build its engine when the session is created, not on the
    first run, and make the cached engine match exactly this case.
    """
    dims = "x".join(str(d) for d in (batch_size, *sample_shape))
    shape = f"{INPUT_NAME}:{dims}"
    return {"trt_profile_min_shapes": shape, "trt_profile_opt_shapes": shape, "trt_profile_max_shapes": shape}


def output_shape(session: Any, batch_size: int) -> tuple[int, ...] | None:
    """The output shape at ``batch_size``, when the graph fixes every other dimension."""
    meta = session.get_outputs()[0]
    if meta.type != "tensor(float)":
        return None
    dims = [batch_size if i == 0 else d for i, d in enumerate(meta.shape)]
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


class OrtGpuSession(OrtSession):
    """An InferenceSession on CUDA whose input and output live on the device.

    :param stream: the ``torch.cuda.Stream`` given to the provider as its compute stream.
    :param copies_in_timing: bind CPU buffers, so that ONNX Runtime copies inside the timed call.
    """

    needs_sync = True

    def __init__(self, session: Any, settings: dict[str, Any], stream: Any, copies_in_timing: bool) -> None:
        super().__init__(session, settings)
        self._binding = session.io_binding()
        self.stream = stream
        self.copies_timed = copies_in_timing
        self.device_timer = CudaEventTimer(stream)
        self._device_id = stream.device.index or 0
        self._values: list[Any] = []  # the bound OrtValues, kept alive with the binding

    def bind(self, inputs: np.ndarray) -> None:
        import onnxruntime as ort

        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        if self.copies_timed:
            self._values = [inputs]  # keep the host array alive: the binding points at its memory
            self._binding.bind_cpu_input(INPUT_NAME, inputs)
            self._binding.bind_output(OUTPUT_NAME, "cpu")
            return
        value = ort.OrtValue.ortvalue_from_numpy(inputs, "cuda", self._device_id)  # copied here, untimed
        self._binding.bind_ortvalue_input(INPUT_NAME, value)
        self._values = [value]
        shape = output_shape(self.session, len(inputs))
        if shape is None:
            self._binding.bind_output(OUTPUT_NAME, "cuda", self._device_id)  # ORT allocates on the device
        else:
            out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", self._device_id)
            self._binding.bind_ortvalue_output(OUTPUT_NAME, out)
            self._values.append(out)
        self._binding.synchronize_inputs()

    def run(self) -> None:
        self.session.run_with_iobinding(self._binding, self._run_options)

    def output(self) -> np.ndarray:
        return self._binding.copy_outputs_to_cpu()[0]

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._values = []
        super().close()


class OnnxRuntimeCudaBackend(OnnxRuntimeCpuBackend):
    """ONNX Runtime, CUDA execution provider, on the FP32 export."""

    name = "onnxruntime_cuda"
    device = "cuda"
    install_hint = GPU_INSTALL_HINT
    lowerings = frozenset({"none"})
    provider = "CUDAExecutionProvider"
    # The CUDA provider has no ai.onnx.ml kernels: a tree ensemble would run on the CPU fallback.
    model_kinds = frozenset({TORCH})

    def missing(self) -> str | None:
        reason = gpu_missing(self)
        if reason is not None:
            return reason
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            return (
                f"{self.name}: this onnxruntime ({ort.__version__}) has no {self.provider} "
                f"(the CPU package is installed; {GPU_INSTALL_HINT})"
            )
        return None

    def provider_list(self, request: BuildRequest, stream: Any, artifact: Artifact | None) -> list[Any]:
        """The providers, with options, in priority order."""
        return [(self.provider, self._cuda_options(stream))]

    @staticmethod
    def _cuda_options(stream: Any) -> dict[str, Any]:
        # user_compute_stream implies has_user_compute_stream; the events are recorded on it too.
        return {"device_id": stream.device.index or 0, "user_compute_stream": str(stream.cuda_stream)}

    def create_session(
        self, path: Path, request: BuildRequest, stream: Any, artifact: Artifact | None
    ) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(path), options, providers=self.provider_list(request, stream, artifact)
        )
        if session.get_providers()[0] != self.provider:
            # onnxruntime falls back to the next provider with only a warning when one fails to
            # load: without this check, a TensorRT case would time the CUDA provider.
            raise RuntimeError(
                f"{request.case_id}: {self.provider} did not load (got {session.get_providers()}); "
                "see the onnxruntime warning above for the missing library"
            )
        return session

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> OrtGpuSession:
        import onnxruntime as ort
        import torch

        stream = torch.cuda.Stream()
        session = self.create_session(Path(str(artifact.path)), request, stream, artifact)
        return OrtGpuSession(
            session,
            {
                "providers": session.get_providers(),
                # Without the stream pointer, which differs every run and would only add diff noise.
                "provider_options": {
                    k: v
                    for k, v in session.get_provider_options().get(self.provider, {}).items()
                    if k != "user_compute_stream"
                },
                "onnxruntime_version": ort.__version__,
                "copies_timed": copies_timed(request.options),
                "device_name": torch.cuda.get_device_name(stream.device),
            },
            stream,
            copies_timed(request.options),
        )


def trt_engine_key(request: BuildRequest, onnx: CacheHit, lowering: str) -> str:
    """What an engine of the TensorRT provider depends on: it is valid only on that GPU and stack."""
    import onnxruntime as ort

    from perfgate.backends.tensorrt import engine_cache_key, gpu_identity, tensorrt_version

    gpu_name, capability = gpu_identity()
    return stable_hash(
        "ort-trt",
        engine_cache_key(
            gpu_name=gpu_name,
            compute_capability=capability,
            tensorrt_version=tensorrt_version(),
            model_hash=onnx.path.parent.name,
            lowering=lowering,
            profile=(request.batch_size, request.batch_size, request.batch_size),
        ),
        ort.__version__,
    )


class OnnxRuntimeTensorRTBackend(OnnxRuntimeCudaBackend):
    """ONNX Runtime, TensorRT execution provider (CUDA provider for what TensorRT cannot take).

    Lowerings: ``none`` (TensorRT FP32), ``fp16`` (``trt_fp16_enable``), and ``int8_static`` when
    the quantization lowering provides a QDQ export (``trt_int8_enable`` on explicit Q/DQ scales).
    """

    name = "onnxruntime_tensorrt"
    marker = "tensorrt"
    libraries = ("onnxruntime-gpu", "tensorrt")
    requires = ("onnxruntime", "onnx", "tensorrt")
    provider = "TensorrtExecutionProvider"
    lowerings = frozenset({"none", "fp16"})

    def build(self, request: BuildRequest) -> Artifact:
        onnx = export_onnx(request)
        key = trt_engine_key(request, onnx, request.lowering)
        engines = request.cache.get_or_build(
            "ort-trt-engines", key, "engines", lambda path: self._warm(path, onnx.path, request)
        )
        return Artifact(
            path=onnx.path,
            size_bytes=dir_size_bytes(engines.path),
            build_s=onnx.build_s + engines.build_s,
            cached=onnx.cached and engines.cached,
            info={"lowering": request.lowering, "onnx": str(onnx.path), "engines": str(engines.path)},
        )

    def _warm(self, folder: Path, onnx: Path, request: BuildRequest) -> None:
        """Create a session once, which builds the engine into ``folder`` (the engine cache)."""
        import torch

        folder.mkdir(parents=True)
        artifact = Artifact(path=onnx, size_bytes=0, build_s=0.0, cached=False, info={"engines": str(folder)})
        stream = torch.cuda.Stream()
        session = self.create_session(onnx, request, stream, artifact)
        del session
        if not any(folder.iterdir()):
            raise RuntimeError(f"{request.case_id}: the TensorRT provider wrote no engine into {folder}")

    def provider_list(self, request: BuildRequest, stream: Any, artifact: Artifact | None) -> list[Any]:
        _preload_tensorrt()
        assert artifact is not None and "engines" in artifact.info, "build() before load()"
        engines = artifact.info["engines"]
        trt_options = {
            **self._cuda_options(stream),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": engines,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": engines,
            "trt_fp16_enable": request.lowering in {"fp16", "int8_static"},
            "trt_int8_enable": request.lowering == "int8_static",
            **profile_shapes(request.batch_size, request.data.sample_shape),
        }
        return [(self.provider, trt_options), ("CUDAExecutionProvider", self._cuda_options(stream))]


def _preload_tensorrt() -> None:
    """Load libnvinfer from the ``tensorrt`` wheel, which the provider then finds by soname.

    The provider dlopens libnvinfer itself and knows nothing of the wheel's folder; importing the
    Python package loads the library into the process first.
    """
    with contextlib.suppress(ImportError):  # a system TensorRT on the loader path serves as well
        importlib.import_module("tensorrt")


ONNXRUNTIME_CUDA = OnnxRuntimeCudaBackend()
ONNXRUNTIME_TENSORRT = OnnxRuntimeTensorRTBackend()
