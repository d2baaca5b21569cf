"""Environment drift: what differs between the machine a baseline was taken on and this one.

A verdict is only as good as the comparison behind it: a new CPU model, another core count, a new
GPU or driver, a new torch, onnxruntime or openvino, or other thread settings all move latency for
reasons that are not the code under test. These are listed next to the verdicts. Clock speed is
not drift: pytest-benchmark's machine info carries the current frequency (``cpu.hz_actual``),
which jitters from run to run, so only perfgate's own hardware snapshot is compared, and it holds
no frequencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Fields of perfgate.hardware.Hardware.to_dict() that change what a case costs.
HARDWARE_FIELDS = (
    "cpu_model",
    "cpu_cores",
    "machine",
    "isa",
    "cuda_version",
    "cudnn_version",
    "python",
    "system",
)
# Libraries whose version moves latency (numpy too: the reference workload runs on it).
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "ai-edge-litert", "numpy")
# What identifies a GPU; its free memory or temperature would be noise, not drift.
GPU_FIELDS = ("name", "compute_capability", "driver", "driver_version", "memory_gib")


@dataclass(frozen=True)
class Drift:
    """One difference between the baseline's environment and this run's.

    :param what: the field, e.g. ``cpu_model``, ``library onnxruntime`` or ``<case>: intra_op_threads``.
    :param baseline: its value in the baseline (``-`` when absent).
    :param current: its value now (``-`` when absent).
    """

    what: str
    baseline: str
    current: str

    def line(self) -> str:
        return f"{self.what}: {self.baseline} -> {self.current}"


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _differs(what: str, old: Any, new: Any) -> list[Drift]:
    return [] if _text(old) == _text(new) else [Drift(what, _text(old), _text(new))]


def _gpus(hardware: dict[str, Any]) -> list[str]:
    return [
        " ".join(f"{k}={gpu[k]}" for k in GPU_FIELDS if gpu.get(k) is not None)
        for gpu in hardware.get("gpus") or []
    ]


def hardware_drift(baseline: dict[str, Any], current: dict[str, Any]) -> list[Drift]:
    """Differences between two ``Hardware.to_dict()`` snapshots.

    :param baseline: the snapshot stored with the baseline (``machine_info.perfgate``).
    :param current: this run's, from ``perfgate.hardware.detect().to_dict()``.
    """
    drifts = [d for name in HARDWARE_FIELDS for d in _differs(name, baseline.get(name), current.get(name))]
    drifts += _differs("gpus", _gpus(baseline), _gpus(current))
    old_libs, new_libs = baseline.get("libraries") or {}, current.get("libraries") or {}
    drifts += [
        d for lib in LIBRARIES for d in _differs(f"library {lib}", old_libs.get(lib), new_libs.get(lib))
    ]
    return drifts


def _thread_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that say how a case ran in parallel: thread counts and execution providers."""
    return {
        k: v
        for k, v in (settings or {}).items()
        if "thread" in k or k in ("providers", "execution_providers")
    }


def settings_drift(
    case_id: str, baseline: dict[str, Any] | None, current: dict[str, Any] | None
) -> list[Drift]:
    """Thread settings of one case that differ from the baseline's.

    :param case_id: the case, named in each drift.
    :param baseline: the case's settings stored with the baseline.
    :param current: its settings in this run.
    """
    old, new = _thread_settings(baseline), _thread_settings(current)
    return [
        d
        for key in sorted(set(old) | set(new))
        for d in _differs(f"{case_id}: {key}", old.get(key), new.get(key))
    ]


def baseline_drift(
    document: dict[str, Any], current_hardware: dict[str, Any], cases: Iterable[tuple[str, dict[str, Any]]]
) -> list[Drift]:
    """Everything that drifted between a baseline file and this run.

    :param document: the baseline, as :func:`perfgate.baselines.read_baseline` returns it.
    :param current_hardware: this run's ``Hardware.to_dict()``.
    :param cases: ``(case_id, settings)`` of this run's compared cases.
    """
    stored = (document.get("machine_info") or {}).get("perfgate") or {}
    drifts = (
        hardware_drift(stored, current_hardware) if stored else [Drift("hardware snapshot", "-", "present")]
    )
    baseline_cases = (document.get("perfgate") or {}).get("cases") or {}
    for case_id, settings in cases:
        if case_id in baseline_cases:
            drifts += settings_drift(case_id, baseline_cases[case_id].get("settings"), settings)
    return drifts
