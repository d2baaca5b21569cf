"""What this runner is: CPU model and instruction sets, CUDA devices, installed runtimes.

The runner id, which keys the baselines, is derived from it unless given.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag (x86) or feature (ARM) -> the name we report.
ISA_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "vnni",
    "avx_vnni": "vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "asimd": "neon",
    "asimddp": "neon_dotprod",
}
# The ISA tiers that split one CPU name into machines of different inference speed, in id order.
RUNNER_ISA = ("avx512", "vnni", "amx")
# The CPU signature lines of /proc/cpuinfo: x86 family/model/stepping, else ARM implementer/part/variant.
SIGNATURE_KEYS = (("cpu family", "model", "stepping"), ("CPU implementer", "CPU part", "CPU variant"))
# Distributions every run depends on, whatever its backends: torch builds and judges every model,
# numpy runs the reference workload, onnx writes the export the ONNX-based backends share. Each
# backend adds its own (``Backend.libraries``): see :func:`recorded_libraries`.
CORE_LIBRARIES = ("numpy", "onnx", "torch")


@dataclass(frozen=True)
class Hardware:
    """A snapshot of the machine, recorded with every result and baseline."""

    cpu_model: str
    cpu_cores: int
    machine: str
    isa: tuple[str, ...]
    gpus: tuple[dict[str, Any], ...] = ()
    cuda_version: str | None = None
    cudnn_version: int | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    python: str = platform.python_version()
    system: str = platform.system()
    gpu_driver: str | None = None  # NVIDIA driver (NVML, else /proc/driver/nvidia/version)
    tensorrt_version: str | None = None  # an engine is only valid for the TensorRT that built it
    # Which silicon: a cloud VM's model name is often just "AMD EPYC" for Rome, Milan and Genoa alike.
    cpu_family: str | None = None
    cpu_model_number: str | None = None
    cpu_stepping: str | None = None

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["isa"] = list(self.isa)
        result["gpus"] = list(self.gpus)
        return result

    def runner_id(self) -> str:
        """A readable id from the hardware: CPU model, signature and ISA tiers, cores, plus the GPU if any."""
        tiers = [name for name in RUNNER_ISA if name in self.isa]
        tag = cpu_tag(self.cpu_family, self.cpu_model_number, self.cpu_stepping)
        parts = [slug(self.cpu_model), tag.lower(), *tiers, f"{self.cpu_cores}c"]
        if self.gpus:
            parts.append(slug(str(self.gpus[0]["name"])))
            if len(self.gpus) > 1:
                parts.append(f"x{len(self.gpus)}")
        return "-".join(part for part in parts if part)


def slug(text: str) -> str:
    """Lower-case words joined by dashes, without vendor noise ('(R)', 'CPU', 'Processor')."""
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*$|\b\d+-core\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, else what ``platform`` knows.

    :param cpuinfo: the text of /proc/cpuinfo; ``None`` reads this machine's.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    match = re.search(r"^(model name|Hardware|cpu model)\s*:\s*(.+)$", text, re.MULTILINE)
    return (match.group(2) if match else platform.processor() or platform.machine()).strip()


def cpu_isa(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The instruction sets of :data:`ISA_FLAGS` that the CPU has, sorted.

    :param cpuinfo: the text of /proc/cpuinfo; ``None`` reads this machine's.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    flags: set[str] = set()
    for match in re.finditer(r"^(flags|Features)\s*:\s*(.+)$", text, re.MULTILINE):
        flags.update(match.group(2).split())
    return tuple(sorted({name for flag, name in ISA_FLAGS.items() if flag in flags}))


def _cpuinfo_value(cpuinfo: str, key: str) -> str | None:
    """The first value of ``key`` in the cpuinfo text, ``None`` when absent or unknown.

    :param cpuinfo: the text of /proc/cpuinfo.
    :param key: the line's name, e.g. ``cpu family``.
    """
    # [ \t], not \s: an empty value must not take the next line's.
    match = re.search(rf"^{re.escape(key)}[ \t]*:[ \t]*(\S+)", cpuinfo, re.MULTILINE)
    value = match.group(1) if match else None
    return None if value is None or value.lower() == "unknown" else value


def cpu_signature(cpuinfo: str | None = None) -> tuple[str | None, str | None, str | None]:
    """The CPU's (family, model, stepping) on x86, (implementer, part, variant) on ARM.

    :param cpuinfo: the text of /proc/cpuinfo; ``None`` reads this machine's.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for keys in SIGNATURE_KEYS:
        family, model, stepping = (_cpuinfo_value(text, key) for key in keys)
        if family is not None or model is not None:
            return family, model, stepping
    return None, None, None


def cpu_tag(family: str | None, model: str | None, stepping: str | None) -> str:
    """A short signature such as ``f25m17s1`` of the parts known, empty when none is.

    :param family: the CPU family (ARM: implementer).
    :param model: the model number (ARM: part).
    :param stepping: the stepping (ARM: variant).
    """
    parts = zip("fms", (family, model, stepping), strict=True)
    return "".join(f"{letter}{value}" for letter, value in parts if value is not None)


def cpu_fields(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU part of a :class:`Hardware`: model name, ISA and signature.

    :param cpuinfo: the text of /proc/cpuinfo; ``None`` reads this machine's.
    """
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    family, model, stepping = cpu_signature(text)
    return {
        "cpu_model": cpu_model(text),
        "isa": cpu_isa(text),
        "cpu_family": family,
        "cpu_model_number": model,
        "cpu_stepping": stepping,
    }


def cpu_cores() -> int:
    """Cores this process may use (the affinity mask, which containers and CI narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def recorded_libraries() -> tuple[str, ...]:
    """The distributions a snapshot records and drift compares, sorted: :data:`CORE_LIBRARIES` and
    the ``libraries`` of every registered backend, one registered from a conftest included.

    Read from the backend registry (imported here, not at import time: this module stays cheap).
    """
    from perfgate.backends import BACKENDS

    return _libraries(tuple(BACKENDS.names()))


@lru_cache(maxsize=8)
def _libraries(backends: tuple[str, ...]) -> tuple[str, ...]:
    from perfgate.backends import BACKENDS

    names = set(CORE_LIBRARIES)
    for backend in backends:
        try:
            names.update(BACKENDS.get(backend).libraries)
        except Exception:  # a backend module that fails to import: its own cases report it
            continue
    return tuple(sorted(names))


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each of ``names`` (distribution names); those not installed are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _cuda_devices() -> tuple[tuple[dict[str, Any], ...], str | None, int | None]:
    import torch

    if not torch.cuda.is_available():
        return (), None, None
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return tuple(gpus), torch.version.cuda, torch.backends.cudnn.version()


def detect() -> Hardware:
    """This runner: the machine, detected once per process, and the versions of :func:`recorded_libraries`
    (read again when a backend registers later, so that its libraries are recorded too)."""
    return _snapshot(recorded_libraries())


@lru_cache(maxsize=8)
def _snapshot(names: tuple[str, ...]) -> Hardware:
    versions = library_versions(names)
    return replace(_machine(), libraries=versions, tensorrt_version=versions.get("tensorrt"))


@lru_cache(maxsize=1)
def _machine() -> Hardware:
    gpus, cuda, cudnn = _cuda_devices()
    return Hardware(
        **cpu_fields(),
        cpu_cores=cpu_cores(),
        machine=platform.machine(),
        gpus=gpus,
        cuda_version=cuda,
        cudnn_version=cudnn,
        gpu_driver=gpu_driver_version() if gpus else None,
    )


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version, from NVML when nvidia-ml-py is installed, else from /proc."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)  # bytes before 11.5
    except Exception:  # ImportError, or pynvml.NVMLError when the library or driver is absent
        pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return match.group(1) if match else None


def cuda_missing_reason() -> str | None:
    """Why CUDA cases cannot run here, or ``None`` when a CUDA device is visible."""
    if detect().gpus:
        return None
    import torch

    if torch.version.cuda is None:
        return f"no CUDA device: this torch ({torch.__version__}) is a CPU-only build"
    return "no CUDA device visible to torch (torch.cuda.is_available() is False)"
