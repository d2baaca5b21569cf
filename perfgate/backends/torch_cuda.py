"""PyTorch on CUDA: eager, torch.compile (three modes) and CUDA graphs.

Lowerings: ``none`` (FP32, with TF32 off so that FP32 means FP32), ``fp16`` and ``bf16`` (the
weights and the input cast to that dtype; outputs read back as float32). Channels-last needs no
lowering: the technique hands over a channels-last module and ``Module.to`` keeps its layout.

Every session times the device with CUDA events on its stream (``perfgate.cuda_timing``) next to
the host time; inputs are copied to the device in ``bind()`` and outputs back in ``output()``,
outside the timed call, unless ``copies_timed`` is set.

Unverified on GPU hardware: written against the documented torch.cuda, torch.compile and
CUDAGraph APIs, not yet run on a GPU (docs/gpu.md, "Not yet verified on GPU hardware").
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.backends.torch_eager import TorchSession, in_memory_artifact, profile_torch
from perfgate.cuda_timing import CudaEventTimer, copies_timed
from perfgate.profiling import OperatorProfile

LOWERING_DTYPES = {"none": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CUDA_TORCH_HINT = (
    "a CUDA build of torch (pip install torch from the PyTorch wheel index of your CUDA version)"
)


def gpu_missing(backend: Backend) -> str | None:
    """Why a CUDA backend cannot run here: the device first (the reason every GPU case shares on a
    CPU runner), then the backend's own modules."""
    from perfgate.hardware import cuda_missing_reason

    reason = cuda_missing_reason()
    if reason is not None:
        return f"{backend.name}: {reason}"
    return Backend.missing(backend)


def cuda_module(request: BuildRequest) -> torch.nn.Module:
    """A copy of the request's model on the GPU in the lowering's dtype.

    A copy, because the session shares the original with the CPU reference and every other case.
    """
    module = copy.deepcopy(request.model).eval()
    return module.to(device="cuda", dtype=LOWERING_DTYPES[request.lowering])


class CudaTorchSession(TorchSession):
    """A torch module on CUDA, with a device timer and copies in or out of the timed call.

    :param module: the module, already on the device.
    :param dtype: the dtype its inputs are cast to.
    :param copies_in_timing: copy the input in and the output out inside ``run()``.
    """

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, copies_in_timing: bool) -> None:
        super().__init__(module, torch.device("cuda", torch.cuda.current_device()), {})
        self.dtype = dtype
        self.copies_timed = copies_in_timing
        self.stream = torch.cuda.current_stream()
        self.device_timer = CudaEventTimer(self.stream)
        self._host_inputs: torch.Tensor | None = None
        self._host_outputs: torch.Tensor | None = None
        self._precision = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if dtype == torch.float32:
            # cuDNN convolutions default to TF32 on Ampere and later: a 10-bit mantissa would
            # fail FP32's lossless tolerance. TF32 is a precision choice, so it is off for FP32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def bind(self, inputs: np.ndarray) -> None:
        host = torch.from_numpy(inputs)
        if self.copies_timed:
            self._host_inputs = host.pin_memory()  # pinned, so that the timed copy is async
            self._inputs = torch.empty(host.shape, dtype=self.dtype, device=self.device)
        else:
            self._inputs = host.to(device=self.device, dtype=self.dtype)
        self.synchronize()  # the copy is done before the timed call starts

    def run(self) -> None:
        inputs = self._inputs
        assert inputs is not None, "run() before bind()"
        with torch.inference_mode():
            if self.copies_timed:
                assert self._host_inputs is not None
                inputs.copy_(self._host_inputs, non_blocking=True)
            self._outputs = self.forward(inputs)
            if self.copies_timed:
                self._copy_out(self._outputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.module(inputs)

    def _copy_out(self, outputs: torch.Tensor) -> None:
        if self._host_outputs is None or self._host_outputs.shape != outputs.shape:
            self._host_outputs = torch.empty(outputs.shape, dtype=outputs.dtype, pin_memory=True)
        self._host_outputs.copy_(outputs, non_blocking=True)

    def output(self) -> np.ndarray:
        assert self._outputs is not None, "run() before output()"
        return self._outputs.float().cpu().numpy()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def close(self) -> None:
        super().close()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._precision
        self._inputs = self._outputs = self._host_inputs = self._host_outputs = None
        torch.cuda.empty_cache()  # so that the next case's peak memory is its own


def cuda_settings(session: CudaTorchSession) -> dict[str, Any]:
    """What a torch CUDA result records about how it ran."""
    return {
        "device_name": torch.cuda.get_device_name(session.device),
        "dtype": str(session.dtype).removeprefix("torch."),
        "copies_timed": session.copies_timed,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": torch.backends.cudnn.allow_tf32,
    }


class TorchCudaBackend(Backend):
    """PyTorch eager on CUDA."""

    device = "cuda"
    marker = "torch"
    libraries = ("torch",)
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    install_hint = CUDA_TORCH_HINT
    lowerings = frozenset(LOWERING_DTYPES)
    session_class: ClassVar[type[CudaTorchSession]] = CudaTorchSession

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]  # one class, several registered instances

    def missing(self) -> str | None:
        return gpu_missing(self)

    def build(self, request: BuildRequest) -> Artifact:
        start = time.perf_counter()
        module = cuda_module(request)
        torch.cuda.synchronize()
        return in_memory_artifact(module, module, time.perf_counter() - start, lowering=request.lowering)

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        return profile_torch(session, folder, cuda=True)

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> CudaTorchSession:
        session = self.session_class(
            artifact.payload, LOWERING_DTYPES[request.lowering], copies_timed(request.options)
        )
        session.settings = cuda_settings(session)
        return session


class CompiledCudaSession(CudaTorchSession):
    """A ``torch.compile``-d module; the CUDA-graph modes mark each call as a new iteration."""

    mark_steps = False

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.mark_steps:
            # CUDA-graph trees reuse output memory between iterations; marking the step says that
            # the previous outputs (already read by output()) may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        return self.module(inputs)


class TorchCompileCudaBackend(TorchCudaBackend):
    """``torch.compile`` with inductor on CUDA; compiling (the first call) is the build time.

    :param name: the backend's name in the matrix.
    :param mode: ``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune`` (autotuned
        kernels, and CUDA graphs).
    """

    requires = ("torch", "triton")  # inductor generates Triton kernels on CUDA
    extra_markers: ClassVar[tuple[str, ...]] = ("compiled",)
    session_class: ClassVar[type[CudaTorchSession]] = CompiledCudaSession

    def __init__(self, name: str, mode: str) -> None:
        super().__init__(name)
        self.mode = mode

    def build(self, request: BuildRequest) -> Artifact:
        start = time.perf_counter()
        module = cuda_module(request)
        compiled = torch.compile(module, mode=self.mode, dynamic=False)
        example = torch.from_numpy(request.data.example(request.batch_size))
        with torch.inference_mode():
            # torch.compile is lazy: the first call at the timed shape compiles, so it is the build.
            compiled(example.to(device="cuda", dtype=LOWERING_DTYPES[request.lowering]))
        torch.cuda.synchronize()
        return in_memory_artifact(
            module, compiled, time.perf_counter() - start, lowering=request.lowering, compile_mode=self.mode
        )

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> CudaTorchSession:
        session = super().load(artifact, request, settings)
        assert isinstance(session, CompiledCudaSession)  # this backend's session_class
        session.mark_steps = self.mode != "default"
        session.settings.update(compile_mode=self.mode, compile_dynamic=False)
        return session


def capture_graph(
    module: torch.nn.Module, static_input: torch.Tensor, warmup_calls: int = 3
) -> tuple[Any, Any]:
    """Capture one forward of ``module`` on ``static_input`` into a ``torch.cuda.CUDAGraph``.

    The warmup runs on a side stream, as the CUDA-graphs docs require, so that lazy
    initialisation (cuDNN handles, autotuning) happens before capture and not inside it.

    :returns: the graph and its static output tensor, which every replay overwrites.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup_calls):
            module(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_output = module(static_input)
    return graph, static_output


class CudaGraphSession(CudaTorchSession):
    """Replays a captured graph; ``bind()`` copies into the static input buffer, outside timing.

    :param shape: the input shape the graph is captured for (batch included).
    """

    def __init__(
        self, module: torch.nn.Module, dtype: torch.dtype, copies_in_timing: bool, shape: tuple[int, ...]
    ) -> None:
        super().__init__(module, dtype, copies_in_timing)
        # Allocated outside inference mode: an inference tensor could not be updated in place later.
        self._static_input = torch.zeros(shape, dtype=dtype, device=self.device)
        start = time.perf_counter()
        self._graph, self._static_output = capture_graph(module, self._static_input)
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start

    def bind(self, inputs: np.ndarray) -> None:
        host = torch.from_numpy(inputs)
        if self.copies_timed:
            self._host_inputs = host.pin_memory()
        else:
            self._static_input.copy_(host)
        self.synchronize()

    def run(self) -> None:
        if self.copies_timed:
            assert self._host_inputs is not None, "run() before bind()"
            self._static_input.copy_(self._host_inputs, non_blocking=True)
        self._graph.replay()
        self._outputs = self._static_output
        if self.copies_timed:
            self._copy_out(self._static_output)

    def close(self) -> None:
        # Releases the graph's memory; a closed session is never run again.
        self._graph = self._static_input = self._static_output = None  # type: ignore[assignment]
        super().close()


class TorchCudaGraphsBackend(TorchCudaBackend):
    """PyTorch eager captured once into a CUDA graph per batch size, then replayed."""

    extra_markers: ClassVar[tuple[str, ...]] = ("compiled",)

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> CudaTorchSession:
        shape = (request.batch_size, *request.data.sample_shape)
        session = CudaGraphSession(
            artifact.payload, LOWERING_DTYPES[request.lowering], copies_timed(request.options), shape
        )
        session.settings = {
            **cuda_settings(session),
            "cuda_graph": True,
            "graph_capture_s": round(session.capture_s, 6),
        }
        return session


TORCH_CUDA = TorchCudaBackend("torch_cuda")
TORCH_COMPILE_CUDA = TorchCompileCudaBackend("torch_compile_cuda", "default")
TORCH_COMPILE_CUDA_REDUCE_OVERHEAD = TorchCompileCudaBackend(
    "torch_compile_cuda_reduce_overhead", "reduce-overhead"
)
TORCH_COMPILE_CUDA_MAX_AUTOTUNE = TorchCompileCudaBackend("torch_compile_cuda_max_autotune", "max-autotune")
TORCH_CUDA_GRAPHS = TorchCudaGraphsBackend("torch_cuda_graphs")
