"""PyTorch eager mode, on the CPU and on CUDA."""

from __future__ import annotations

import copy
import io
import time
from typing import Any

import numpy as np
import torch

from perfgate.backends.base import Artifact, Backend, BuildRequest, RunSettings


def serialized_size(module: torch.nn.Module) -> int:
    """Bytes of the module's state dict as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def quantize_dynamic_int8(module: torch.nn.Module) -> torch.nn.Module:
    """INT8 weights with activations quantized on the fly, for Linear, LSTM and GRU layers."""
    from torch.ao.quantization import quantize_dynamic

    supported = {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}
    return quantize_dynamic(copy.deepcopy(module), supported, dtype=torch.qint8)


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


class TorchEagerBackend(Backend):
    """Runs the torch module as it is, after the technique's lowering."""

    marker = "torch"
    requires = ("torch",)

    def __init__(self, name: str, device: str, lowerings: frozenset[str]) -> None:
        self.name = name  # type: ignore[misc]
        self.device = device  # type: ignore[misc]
        self.lowerings = lowerings  # type: ignore[misc]

    def build(self, request: BuildRequest) -> Artifact:
        start = time.perf_counter()
        module = request.model
        if request.lowering == "int8_dynamic":
            module = quantize_dynamic_int8(module)
        module = module.to(self._torch_device()).eval()
        return Artifact(
            path=None,
            size_bytes=serialized_size(module),
            build_s=time.perf_counter() - start,
            cached=False,
            payload=module,
            info={"lowering": request.lowering},
        )

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

    def _torch_device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")


TORCH_CPU = TorchEagerBackend("torch_cpu", "cpu", frozenset({"none", "int8_dynamic"}))
TORCH_CUDA = TorchEagerBackend("torch_cuda", "cuda", frozenset({"none"}))
