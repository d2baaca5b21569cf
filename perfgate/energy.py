"""Energy per inference, where a counter measures it: never estimated.

Three sources, in this order of meaning:

- **NVML** on an NVIDIA GPU (a CUDA case): the board's total-energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded; Volta and newer).
- **RAPL** on the CPU (a CPU case): the package counters under ``/sys/class/powercap`` (Intel, and
  AMD Zen through the same driver), microjoules, wrapping at ``max_energy_range_uj``.
- **unavailable**, with the reason (no counter on this machine, not readable by this user, no
  NVML library or no GPU): the report says so and shows no figure. Nothing is inferred from a
  rated power, as codecarbon would.

A case's energy is measured in its own loop of fixed duration after it was timed (the timed
rounds stay untouched), as joules per inference and samples per joule. A counter measures its
whole domain: the GPU board, or the CPU package with everything else running on it; the
reading names it (``scope``), and a shared runner's CPU figure is only as clean as the machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

POWERCAP = Path("/sys/class/powercap")
# A fixed duration, so that a counter that ticks every ~1 ms (RAPL) or ~20 ms (some NVML boards)
# integrates many ticks whatever the model's latency.
ENERGY_DURATION_S = 1.0


class EnergyCounter(Protocol):
    """A monotonic energy counter of one domain."""

    name: str  # "nvml" or "rapl"
    scope: str  # what it measures, in words

    def joules(self) -> float:
        """The counter now, in joules (monotonic across a wrap: the counter handles it)."""
        ...


@dataclass(frozen=True)
class EnergyReading:
    """One case's energy, or why there is none; stored as ``CaseResult.energy``."""

    source: str  # "nvml", "rapl" or "unavailable"
    measured: bool
    reason: str | None = None  # why it is unavailable
    scope: str | None = None  # what the counter measures
    joules: float | None = None
    inferences: int = 0  # samples run in the loop (batches x batch size)
    duration_s: float = 0.0

    @property
    def joules_per_inference(self) -> float | None:
        return (
            self.joules / self.inferences
            if self.measured and self.joules is not None and self.inferences
            else None
        )

    @property
    def samples_per_joule(self) -> float | None:
        return self.inferences / self.joules if self.measured and self.joules else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "joules_per_inference": self.joules_per_inference,
            "samples_per_joule": self.samples_per_joule,
        }


def unavailable(reason: str) -> EnergyReading:
    return EnergyReading("unavailable", measured=False, reason=reason)


class RaplCounter:
    """The sum of the CPU package domains' ``energy_uj`` (``intel-rapl:N``; their sub-zones, core
    and uncore, are inside the package figure and are not added again)."""

    name = "rapl"

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.scope = f"CPU package energy ({len(zones)} package domain(s)), every process on them included"
        self._ranges = [int((zone / "max_energy_range_uj").read_text()) for zone in zones]
        self._last = [self._raw(zone) for zone in zones]
        self._total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def joules(self) -> float:
        for index, zone in enumerate(self.zones):
            now = self._raw(zone)
            step = now - self._last[index]
            if step < 0:  # the counter wrapped at max_energy_range_uj
                step += self._ranges[index] + 1
            self._total_uj += step
            self._last[index] = now
        return self._total_uj / 1e6


def rapl_counter(root: Path = POWERCAP) -> RaplCounter | str:
    """The RAPL counter of this machine, or why there is none (a reason in one line)."""
    if not root.is_dir():
        return f"this machine has no {root} (no RAPL energy counter exposed: a VM, a container, or a CPU without one)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return f"{root} has no RAPL package domain (intel-rapl:N)"
    try:
        return RaplCounter(zones)
    except PermissionError:
        return f"{zones[0] / 'energy_uj'} is not readable by this user (root only since Linux 5.10: grant read access to measure)"
    except (OSError, ValueError) as exc:
        return f"{zones[0]}: the RAPL counter cannot be read ({exc})"


class NvmlCounter:
    """An NVIDIA GPU's total-energy counter, through NVML (the ``nvidia-ml-py`` package)."""

    name = "nvml"

    def __init__(self, nvml: Any, handle: Any, device: str) -> None:
        self._nvml, self._handle = nvml, handle
        self.scope = f"GPU board energy ({device})"

    def joules(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3


def nvml_counter(index: int = 0) -> NvmlCounter | str:
    """The NVML counter of GPU ``index``, or why there is none (a reason in one line)."""
    try:
        import pynvml
    except ImportError:
        return "nvidia-ml-py is not installed (pip install 'perfgate[gpu]'), so NVML cannot be read"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as exc:
        return f"NVML has no energy counter for GPU {index}: {exc} (Volta or newer, and a driver that exposes it)"
    return NvmlCounter(pynvml, handle, name.decode() if isinstance(name, bytes) else str(name))


def counter_for(device: str) -> EnergyCounter | str:
    """The counter that measures a case on ``device`` ("cpu" or "cuda"), or why there is none."""
    return nvml_counter() if device == "cuda" else rapl_counter()


def measure_energy(
    step: Callable[[], None],
    counter: EnergyCounter,
    samples_per_call: int,
    duration_s: float = ENERGY_DURATION_S,
) -> EnergyReading:
    """Run ``step`` (one synchronized call) for ``duration_s`` and read the counter around it.

    :param samples_per_call: inferences one call makes (the batch size, times the batches an
        async queue runs per call).
    """
    start_j, start = counter.joules(), time.perf_counter()
    calls = 0
    while calls == 0 or time.perf_counter() - start < duration_s:
        step()
        calls += 1
    elapsed, joules = time.perf_counter() - start, counter.joules() - start_j
    if joules <= 0:
        return unavailable(
            f"the {counter.name} counter did not move in {elapsed:.2f} s ({counter.scope}): it updates too rarely to measure here"
        )
    return EnergyReading(
        counter.name,
        measured=True,
        scope=counter.scope,
        joules=joules,
        inferences=calls * samples_per_call,
        duration_s=elapsed,
    )
