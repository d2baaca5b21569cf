"""PyTorch eager mode, on the CPU and on CUDA."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings
from perfgate.model_kinds import MODEL_KINDS, TORCH
from perfgate.profiling import OperatorProfile, profiled_runs


def serialized_size(module: torch.nn.Module) -> int:
    """Bytes of the module's state dict as ``torch.save`` writes it."""
    return MODEL_KINDS[TORCH].weight_bytes(module)


def in_memory_artifact(module: torch.nn.Module, payload: Any, build_s: float, **info: Any) -> Artifact:
    """A torch model that lives in memory: its size is that of its serialized state dict.

    :param module: the module whose weights count as the artifact's size.
    :param payload: what the session runs (the module, or its compiled wrapper).
    :param build_s: what building it cost, in seconds.
    """
    return Artifact(None, serialized_size(module), build_s, cached=False, payload=payload, info=info)


def quantize_dynamic_int8(module: torch.nn.Module) -> torch.nn.Module:
    """INT8 weights with activations quantized on the fly, for Linear, LSTM and GRU layers."""
    from torch.ao.quantization import quantize_dynamic

    supported = {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}
    return quantize_dynamic(copy.deepcopy(module), supported, dtype=torch.qint8)


def quantize_static_int8(request: BuildRequest) -> torch.nn.Module:
    """Static INT8 through FX graph mode, calibrated as the request's calibration says."""
    from perfgate.backends import torch_fx_quant

    return torch_fx_quant.quantize_static(request.model, request.data, request.require_calibration())


def convert_qat_int8(request: BuildRequest) -> torch.nn.Module:
    """The QAT technique's fake-quant model, converted to INT8 modules with its learned scales."""
    from perfgate.backends import torch_fx_quant

    return torch_fx_quant.convert_qat(request.model)


class BFloat16Module(torch.nn.Module):
    """Weights and compute in bfloat16 (oneDNN AVX512-BF16/AMX kernels), float32 in and out.

    A whole-model cast rather than autocast: autocast re-casts every weight on every call, which
    on a model this small costs more than the bf16 kernels save. Normalisations and softmax still
    accumulate in float32 inside torch's CPU kernels.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).to(torch.bfloat16).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).float()


# What each lowering makes of the technique's torch model; fp16 is absent on purpose: torch's CPU
# fp16 kernels are reference loops on most x86 CPUs, a case nobody would deploy.
LOWERINGS: dict[str, Callable[[BuildRequest], torch.nn.Module]] = {
    "none": lambda request: request.model,
    "int8_dynamic": lambda request: quantize_dynamic_int8(request.model),
    "int8_static": quantize_static_int8,
    "int8_qat": convert_qat_int8,
    "bf16": lambda request: BFloat16Module(request.model),
}


def count_torch_ops(module: torch.nn.Module) -> dict[str, int]:
    """Count the weighted compute modules of ``module`` that are quantized and those left float.

    Quantized: torch.ao's quantized, dynamic and fused intrinsic modules (Linear, Conv*,
    ConvTranspose*, LSTM, GRU, their cells). Float: ``nn.Linear``, ``nn.Conv*``,
    ``nn.ConvTranspose*``, ``nn.RNN``/``LSTM``/``GRU`` and their cells, and a float
    ``nn.MultiheadAttention``'s input projection (its ``out_proj`` is an ``nn.Linear`` child).
    Functional calls (``F.linear`` in a ``forward``) are not modules and are not counted.

    :param module: the module a session runs (after the lowering).
    """
    import torch.ao.nn.quantizable as nnqa
    import torch.ao.nn.quantized as nnq
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase, RNNCellBase
    from torch.ao.nn.quantized.modules.conv import _ConvNd

    # nnq.Linear covers the dynamic and fused (LinearReLU) ones, _ConvNd every quantized conv and
    # ConvReLU. None of them subclasses a float module in this torch, but QAT and reference
    # modules do (they compute in float), so the quantized check must come first.
    quantized = (nnq.Linear, _ConvNd, RNNBase, RNNCellBase)
    floating = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.RNNBase, torch.nn.RNNCellBase)
    counts = {"quantized_ops": 0, "float_ops": 0}

    def visit(node: torch.nn.Module) -> None:
        if isinstance(node, quantized):
            counts["quantized_ops"] += 1
            return  # a quantized LSTM's packed params are part of it, not ops of their own
        if isinstance(node, floating):
            counts["float_ops"] += 1
            return
        # The float attention's q/k/v projection is a parameter, not a Linear child; the
        # quantizable one (a subclass) has real linear_Q/K/V children, counted below.
        if isinstance(node, torch.nn.MultiheadAttention) and not isinstance(node, nnqa.MultiheadAttention):
            counts["float_ops"] += 1 if node._qkv_same_embed_dim else 3
        for child in node.children():
            visit(child)

    visit(module)
    return counts


class TorchSession:
    """A torch module bound to one input tensor."""

    def __init__(self, module: torch.nn.Module, device: torch.device, settings: dict[str, Any]) -> None:
        self.module = module
        self.device = device
        self.settings = settings
        self.needs_sync = device.type == "cuda"
        self._inputs: torch.Tensor | None = None
        self._outputs: torch.Tensor | None = None
        self._restore_threads = torch.get_num_threads()

    def bind(self, inputs: np.ndarray) -> None:
        self._inputs = torch.from_numpy(inputs).to(self.device)

    def run(self) -> None:
        with torch.inference_mode():
            self._outputs = self.module(self._inputs)

    def output(self) -> np.ndarray:
        assert self._outputs is not None, "run() before output()"
        return self._outputs.float().cpu().numpy()

    def synchronize(self) -> None:
        if self.needs_sync:
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        torch.set_num_threads(self._restore_threads)


def profile_torch(session: Any, folder: Path, cuda: bool = False) -> OperatorProfile:
    """``torch.profiler`` around the session's calls: each aten operator's self time per call (on
    the device for a CUDA case), a Chrome trace and the top-operators table in ``folder``."""
    from torch.profiler import ProfilerActivity, profile

    def call() -> None:
        session.run()
        session.synchronize()

    call()  # a first call outside the profile: lazy initialisation is not the model's time
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as profiler:
        runs = profiled_runs(call)
    averages = profiler.key_averages()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    operators = {}
    for event in averages:
        total = event.self_device_time_total if cuda else event.self_cpu_time_total
        if total > 0:
            operators[event.key] = total / runs
    trace, table = folder / "trace.json", folder / "top_operators.txt"
    profiler.export_chrome_trace(str(trace))
    table.write_text(averages.table(sort_by=sort_by, row_limit=25) + "\n")
    return OperatorProfile("torch.profiler", runs, operators, [str(trace), str(table)])


class TorchEagerBackend(Backend):
    """Runs the torch module as it is, after the technique's lowering."""

    marker = "torch"
    libraries = ("torch",)
    requires = ("torch",)

    def __init__(self, name: str, device: str, lowerings: frozenset[str]) -> None:
        self.name = name  # type: ignore[misc]  # one class, several registered instances
        self.device = device  # type: ignore[misc]
        self.lowerings = lowerings  # type: ignore[misc]

    def build(self, request: BuildRequest) -> Artifact:
        start = time.perf_counter()
        module = LOWERINGS[request.lowering](request).to(self._torch_device()).eval()
        return in_memory_artifact(module, module, time.perf_counter() - start, lowering=request.lowering)

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> TorchSession:
        session = TorchSession(artifact.payload, self._torch_device(), {})
        if settings.intra_op_threads is not None:
            torch.set_num_threads(settings.intra_op_threads)
        session.settings = {
            "intra_op_threads": torch.get_num_threads(),
            "inter_op_threads": torch.get_num_interop_threads(),
            "torch_version": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine,
        }
        return session

    def profile(
        self, artifact: Artifact, request: BuildRequest, settings: RunSettings, session: Any, inputs: Any, folder: Path
    ) -> OperatorProfile:
        return profile_torch(session, folder, cuda=self.device == "cuda")

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """Quantized and float compute modules of the lowered module (see :func:`count_torch_ops`).

        :param artifact: what ``build`` returned; its payload is the module the session runs.
        """
        return count_torch_ops(artifact.payload)

    def _torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")


TORCH_CPU = TorchEagerBackend("torch_cpu", "cpu", frozenset(LOWERINGS))
