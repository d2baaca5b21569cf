"""Peak memory of a case: the process's resident-set high-water mark, reset per case on Linux.

On a GPU, also the torch caching allocator's peak (reset per case) and what NVML says this process
holds on the device, which includes the memory of ONNX Runtime and TensorRT that torch never sees.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class PeakMemory:
    """Tracks the peak RSS between ``start()`` and ``peak_mb()``.

    Linux lets a process reset its own high-water mark (writing 5 to clear_refs), so each case
    gets its own peak; elsewhere the peak is the process's lifetime maximum, flagged as such.
    """

    def __init__(self) -> None:
        self.per_case = False
        self.baseline_mb = 0.0

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self.per_case = _status_kib("VmHWM") is not None
        except OSError:
            self.per_case = False
        self.baseline_mb = (_status_kib("VmRSS") or 0) / 1024
        reset_gpu_peak()

    def peak_mb(self) -> float:
        hwm = _status_kib("VmHWM") if self.per_case else None
        if hwm is not None:
            return hwm / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_cuda_in_use() -> Any:
    """The ``torch`` module when CUDA is already initialised in this process, else ``None``.

    Checked through ``sys.modules`` so that a CPU-only run never imports torch.cuda state here, and
    never initialises CUDA just to read a counter.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch


def reset_gpu_peak() -> None:
    """Reset the torch allocator's peak counters, so that the next reading is this case's peak."""
    torch = _torch_cuda_in_use()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def nvml_process_used_mb(device_index: int = 0) -> float | None:
    """Device memory this process holds, per NVML (pynvml, from nvidia-ml-py); ``None`` without it.

    NVML reports current usage, not a peak; read at the end of the timing it is the footprint of the
    loaded model, its workspace and every runtime's arena.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == os.getpid() and process.usedGpuMemory is not None:
                return process.usedGpuMemory / 2**20
        return None  # in a container NVML may not see our pid: no number beats a wrong one
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def gpu_peak_memory() -> dict[str, float | None]:
    """GPU memory of the case, in MiB: torch allocator peaks and the NVML process footprint."""
    torch = _torch_cuda_in_use()
    if torch is None:
        return {}
    device = torch.cuda.current_device()
    return {
        "gpu_torch_peak_allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 3),
        "gpu_torch_peak_reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 3),
        "gpu_nvml_process_used_mb": nvml_process_used_mb(device),
    }
