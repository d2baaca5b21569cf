"""TensorRT native engines, built from the shared ONNX export with the TensorRT 10 Python API.

Lowerings:

- ``none``: an FP32 engine, TF32 off (FP32 means FP32; TF32 would fail the lossless tolerance);
- ``fp16``: ``BuilderFlag.FP16``, TensorRT picks FP16 kernels where they are faster;
- ``int8_static``: ``BuilderFlag.INT8`` (and FP16 for the layers left in float). TensorRT 10.1
  deprecates implicit quantization (calibrators) for explicit Q/DQ graphs; perfgate uses a QDQ
  export when the quantization lowering provides one (:func:`qdq_export`), else an INT8
  calibrator (entropy 2 or min-max, as the technique's ``calibration.method`` says) fed by
  ``request.data.calibration_set``. TensorRT has no percentile calibrator: that method is skipped.

Each engine has one optimization profile: min/opt/max batch of ``(trt_min_batch, batch,
trt_max_batch)`` from the technique options, ``(1, batch, batch)`` by default, so that one engine
serves a range of a batch sweep when asked to. An engine is only valid on the GPU model, compute
capability and TensorRT version that built it: its cache key holds all three and the model hash.

TensorRT 11 removes ``BuilderFlag.FP16``/``INT8`` and the calibrators, so the ``gpu`` extra pins
``tensorrt<11``.

Unverified on GPU hardware: written against the TensorRT 10 Python API documentation, not yet
run on a GPU (docs/gpu.md, "Not yet verified on GPU hardware").
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from perfgate.cache import CacheHit, stable_hash
from perfgate.cuda_timing import CudaEventTimer, copies_timed
from perfgate.profiling import OperatorProfile, ProfileUnavailable, profiled_runs

WORKSPACE_BYTES = 4 << 30  # builder scratch memory; the H200 has plenty, tiny models need little
CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build an engine; the message says why."""


def engine_cache_key(
    *,
    gpu_name: str,
    compute_capability: str,
    tensorrt_version: str,
    model_hash: str,
    lowering: str,
    profile: tuple[int, int, int],
    extra: Any = None,
) -> str:
    """The cache key of an engine: everything that makes an engine valid or different.

    :param gpu_name: the GPU model (``NVIDIA H200``): engines are tuned to it.
    :param compute_capability: ``"9.0"``; an engine does not load on another one.
    :param tensorrt_version: an engine only deserialises in the TensorRT that built it.
    :param model_hash: the key of the ONNX graph it was built from.
    :param lowering: ``none``, ``fp16`` or ``int8_static``.
    :param profile: min, opt and max batch of its optimization profile.
    :param extra: anything else it depends on (the calibration settings and data).
    """
    return stable_hash(
        "tensorrt-engine",
        gpu_name,
        compute_capability,
        tensorrt_version,
        model_hash,
        lowering,
        list(profile),
        extra,
    )


def batch_profile(batch_size: int, options: dict[str, Any]) -> tuple[int, int, int]:
    """Min, opt and max batch of the optimization profile for a case.

    :param batch_size: the case's batch, the profile's optimum.
    :param options: technique options; ``trt_min_batch`` / ``trt_max_batch`` widen the range.
    """
    low = int(options.get("trt_min_batch", 1))
    high = int(options.get("trt_max_batch", batch_size))
    if not 1 <= low <= batch_size <= high:
        raise ValueError(
            f"TensorRT profile: need 1 <= trt_min_batch <= {batch_size} <= trt_max_batch, got {low}..{high}"
        )
    return low, batch_size, high


def gpu_identity() -> tuple[str, str]:
    """Name and compute capability of the current CUDA device."""
    import torch

    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def tensorrt_version() -> str:
    """The installed TensorRT version, without importing it."""
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    import tensorrt

    return str(tensorrt.__version__)


def qdq_export(request: BuildRequest, onnx: CacheHit) -> CacheHit | None:
    """The explicit-quantization (Q/DQ) ONNX graph of ``request``, when one exists for TensorRT.

    TensorRT takes only signed, symmetric INT8 Q/DQ (zero points of 0). ONNX Runtime's
    ``quantize_static_onnx`` is S8S8 but with asymmetric activations, so it does not qualify; a
    symmetric variant (``ActivationSymmetric``/``WeightSymmetric``), published in
    ``perfgate.backends.onnxruntime`` as ``quantize_static_qdq_tensorrt(request, fp32)``, would be
    used here. ``None`` until then: the calibrator path is used.
    """
    from perfgate.backends import onnxruntime as ort_backend

    export = getattr(ort_backend, "quantize_static_qdq_tensorrt", None)
    return export(request, onnx.path) if export is not None else None


@dataclass(frozen=True)
class EngineSpec:
    """What one engine build needs besides the ONNX graph."""

    lowering: str
    profile: tuple[int, int, int]
    sample_shape: tuple[int, ...]
    explicit_quantization: bool = False
    calibration_method: str | None = None
    calibration_batches: tuple[np.ndarray, ...] = ()


def _shape(batch: int, sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (batch, *sample_shape)


def make_calibrator(trt: Any, method: str, batches: tuple[np.ndarray, ...], cache_file: Path) -> Any:
    """An INT8 calibrator of ``method`` that hands TensorRT ``batches`` from device memory."""
    import torch

    base = getattr(trt, CALIBRATORS[method])

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # TensorRT's bindings need the base constructor called explicitly
            self._batches = iter(batches)
            self._device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None  # no more data: calibration ends
            self._device.copy_(torch.from_numpy(batch))
            torch.cuda.synchronize()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return None  # the engine itself is cached; a stale scale table must never be reused

        def write_calibration_cache(self, cache: Any) -> None:
            cache_file.write_bytes(bytes(cache))  # kept next to the engine, for inspection

    return Calibrator()


def calibration_batches(request: BuildRequest) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
    """The calibration settings and equal-sized batches (a calibration profile has one shape)."""
    calibration = request.require_calibration()
    batches = [b.astype(np.float32) for b in calibration.batches(request.data)]
    full = tuple(b for b in batches if len(b) == len(batches[0]))  # drop a short last batch
    return calibration.to_dict(), full


def _configure_precision(trt: Any, builder: Any, config: Any, spec: EngineSpec, folder: Path) -> None:
    if spec.lowering == "none":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif spec.lowering == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif spec.lowering == "int8_static":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT keeps in float may still use FP16
        if not spec.explicit_quantization:
            assert spec.calibration_method is not None and spec.calibration_batches
            config.int8_calibrator = make_calibrator(
                trt, spec.calibration_method, spec.calibration_batches, folder / "calibration.cache"
            )
            calibration = builder.create_optimization_profile()
            shape = _shape(len(spec.calibration_batches[0]), spec.sample_shape)
            calibration.set_shape(INPUT_NAME, shape, shape, shape)
            config.set_calibration_profile(calibration)


def build_engine(onnx_path: Path, engine_path: Path, spec: EngineSpec) -> None:
    """Parse ``onnx_path`` and write a serialized engine to ``engine_path``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    low, opt, high = spec.profile
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME,
        _shape(low, spec.sample_shape),
        _shape(opt, spec.sample_shape),
        _shape(high, spec.sample_shape),
    )
    config.add_optimization_profile(profile)
    _configure_precision(trt, builder, config, spec, engine_path.parent)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    with open(engine_path, "wb") as handle:
        handle.write(serialized)


class TensorRTSession:
    """A deserialized engine with device buffers bound once; ``run`` enqueues on its own stream.

    :param engine_bytes: the serialized engine.
    :param shape: the input shape of this case (within the engine's profile).
    :param copies_in_timing: copy input and output inside the timed call.
    """

    needs_sync = True

    def __init__(self, engine_bytes: bytes, shape: tuple[int, ...], copies_in_timing: bool) -> None:
        import tensorrt as trt
        import torch

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EngineBuildError(
                "TensorRT could not deserialize the engine (built by another TensorRT or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        # A stream of our own: enqueueV3 on the legacy default stream adds synchronizations.
        self.stream = torch.cuda.Stream()
        self.device_timer = CudaEventTimer(self.stream)
        self.copies_timed = copies_in_timing
        self.context.set_input_shape(INPUT_NAME, shape)
        self._input = self._device_buffer(INPUT_NAME, shape)
        self._output = self._device_buffer(OUTPUT_NAME, tuple(self.context.get_tensor_shape(OUTPUT_NAME)))
        self.context.set_tensor_address(INPUT_NAME, self._input.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, self._output.data_ptr())
        self._host_input: Any = None
        self._host_output: Any = None
        self.settings: dict[str, Any] = {}

    def _device_buffer(self, name: str, shape: tuple[int, ...]) -> Any:
        import tensorrt as trt
        import torch

        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
        return torch.empty(shape, dtype=dtype, device="cuda")

    def bind(self, inputs: np.ndarray) -> None:
        import torch

        host = torch.from_numpy(inputs)
        if self.copies_timed:
            self._host_input = host.pin_memory()
            self._host_output = torch.empty(self._output.shape, dtype=self._output.dtype, pin_memory=True)
        else:
            self._input.copy_(host)
        torch.cuda.synchronize()

    def run(self) -> None:
        import torch

        with torch.cuda.stream(self.stream):
            if self.copies_timed:
                self._input.copy_(self._host_input, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log above)")
            if self.copies_timed:
                self._host_output.copy_(self._output, non_blocking=True)

    def output(self) -> np.ndarray:
        return self._output.float().cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context = self.engine = None
        self._input = self._output = self._host_input = self._host_output = None


class TensorRTBackend(Backend):
    """TensorRT native engines from the ONNX export, cached per GPU, TensorRT and model."""

    name = "tensorrt"
    device = "cuda"
    marker = "tensorrt"
    libraries = ("tensorrt", "torch")
    requires = ("tensorrt", "onnx", "onnxruntime")  # onnxruntime validates the shared export
    install_hint = "pip install 'perfgate[gpu]'"
    lowerings = frozenset({"none", "fp16", "int8_static"})

    def missing(self) -> str | None:
        from perfgate.backends.torch_cuda import gpu_missing

        return gpu_missing(self)

    def build(self, request: BuildRequest) -> Artifact:
        onnx = export_onnx(request)
        source, spec, extra = self._spec(request, onnx)
        gpu_name, capability = gpu_identity()
        key = engine_cache_key(
            gpu_name=gpu_name,
            compute_capability=capability,
            tensorrt_version=tensorrt_version(),
            model_hash=source.path.parent.name,
            lowering=request.lowering,
            profile=spec.profile,
            extra=extra,
        )
        engine = request.cache.get_or_build(
            "tensorrt-engine", key, "model.engine", lambda p: build_engine(source.path, p, spec)
        )
        return Artifact(
            path=engine.path,
            size_bytes=engine.path.stat().st_size,
            build_s=onnx.build_s + (source.build_s if source is not onnx else 0.0) + engine.build_s,
            cached=onnx.cached and source.cached and engine.cached,
            info={
                "lowering": request.lowering,
                "onnx": str(source.path),
                "profile": list(spec.profile),
                **extra,
            },
        )

    def _spec(self, request: BuildRequest, onnx: CacheHit) -> tuple[CacheHit, EngineSpec, dict[str, Any]]:
        """The graph to build from, the engine spec, and what else the engine depends on."""
        profile = batch_profile(request.batch_size, request.options)
        shape = request.data.sample_shape
        if request.lowering != "int8_static":
            return onnx, EngineSpec(request.lowering, profile, shape), {}
        qdq = qdq_export(request, onnx)
        if qdq is not None:
            return (
                qdq,
                EngineSpec(request.lowering, profile, shape, explicit_quantization=True),
                {"int8": "qdq"},
            )
        calibration, batches = calibration_batches(request)
        method = calibration["method"]
        if method not in CALIBRATORS:
            import pytest

            pytest.skip(
                f"{request.case_id}: TensorRT has no {method!r} calibrator (only {', '.join(CALIBRATORS)})"
            )
        extra = {
            "int8": "calibrator",
            "calibration": calibration,
            "calibration_data": request.data.fingerprint(),
        }
        return onnx, EngineSpec(request.lowering, profile, shape, False, method, batches), extra

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        """TensorRT's ``IProfiler`` on the case's own execution context: each layer's time per call
        as TensorRT reports it at the stream's synchronization. Not yet run on a GPU (docs/gpu.md)."""
        import tensorrt as trt

        totals: dict[str, float] = {}

        class LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + ms * 1e3

        reporter = LayerTimes()
        session.context.profiler = reporter

        def call() -> None:
            session.run()
            session.synchronize()

        runs = profiled_runs(call)
        if not totals:
            raise ProfileUnavailable("TensorRT's profiler reported no layer time for this engine")
        return OperatorProfile("tensorrt IProfiler", runs, {k: v / runs for k, v in totals.items()})

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> TensorRTSession:
        assert artifact.path is not None
        import torch

        timed = copies_timed(request.options)
        session = TensorRTSession(
            Path(artifact.path).read_bytes(), (request.batch_size, *request.data.sample_shape), timed
        )
        session.settings = {
            "tensorrt_version": tensorrt_version(),
            "device_name": torch.cuda.get_device_name(torch.cuda.current_device()),
            "lowering": request.lowering,
            "profile_batches": artifact.info.get("profile"),
            "int8": artifact.info.get("int8"),
            "copies_timed": timed,
        }
        return session


TENSORRT = TensorRTBackend()
