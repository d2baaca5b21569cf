"""Environment drift: what differs between the machine a baseline was taken on and this one.

A verdict is only as good as the comparison behind it: a new CPU model, another core count, a new
GPU or driver, a new torch, onnxruntime or openvino, or other thread settings all move latency for
reasons that are not the code under test. These are listed next to the verdicts. Clock speed is
not drift: pytest-benchmark's machine info carries the current frequency (``cpu.hz_actual``),
which jitters from run to run, so only perfgate's own hardware snapshot is compared, and it holds
no frequencies.

Some drift makes the comparison meaningless rather than merely suspect: another CPU (model name,
signature, instruction sets or core count), architecture or GPU, or another major.minor of a
runtime. :func:`incomparable_reasons` names it, so that such a case is reported incomparable
instead of failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from perfgate.hardware import cpu_tag, recorded_libraries

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
    "cpu_family",
    "cpu_model_number",
    "cpu_stepping",
)
# The CPU signature fields, absent from snapshots written before they were recorded.
SIGNATURE_FIELDS = ("cpu_family", "cpu_model_number", "cpu_stepping")
NO_SNAPSHOT = "the baseline has no hardware snapshot (refresh it)"
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
    # A field one snapshot never recorded (an older perfgate wrote it) is unknown, not changed.
    drifts = [
        d
        for name in HARDWARE_FIELDS
        if name in baseline and name in current
        for d in _differs(name, baseline.get(name), current.get(name))
    ]
    drifts += _differs("gpus", _gpus(baseline), _gpus(current))
    old_libs, new_libs = baseline.get("libraries") or {}, current.get("libraries") or {}
    drifts += [
        d
        for lib in recorded_libraries()
        for d in _differs(f"library {lib}", old_libs.get(lib), new_libs.get(lib))
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


def _cpu_text(hardware: dict[str, Any]) -> str:
    """The CPU's model name with its signature where recorded, e.g. ``AMD EPYC f25m17s1``.

    :param hardware: a ``Hardware.to_dict()`` snapshot.
    """
    tag = cpu_tag(*(hardware.get(name) for name in SIGNATURE_FIELDS))
    return " ".join(str(part) for part in (hardware.get("cpu_model"), tag) if part)


def _cpu_reasons(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Another CPU: model name or signature (compared only where both snapshots know it).

    :param baseline: the baseline's hardware snapshot.
    :param current: this run's.
    """
    known = [
        name
        for name in ("cpu_model", *SIGNATURE_FIELDS)
        if baseline.get(name) is not None and current.get(name) is not None
    ]
    if all(str(baseline[name]) == str(current[name]) for name in known):
        return []
    return [f"CPU model: {_cpu_text(baseline)} -> {_cpu_text(current)}"]


def _field_reason(label: str, name: str, baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """A reason when a field both snapshots recorded differs; an order change of a list is none.

    :param label: how the reason names the field.
    :param name: the key in the snapshots.
    :param baseline: the baseline's hardware snapshot.
    :param current: this run's.
    """
    if name not in baseline or name not in current:
        return []
    old, new = baseline[name], current[name]
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        old, new = sorted(map(str, old)), sorted(map(str, new))
    return [] if _text(old) == _text(new) else [f"{label}: {_text(old)} -> {_text(new)}"]


def _first_gpu(hardware: dict[str, Any]) -> dict[str, Any]:
    """The GPU the CUDA cases run on (device 0), ``{"name": "none"}`` without one.

    :param hardware: a ``Hardware.to_dict()`` snapshot.
    """
    gpus = hardware.get("gpus") or []
    return gpus[0] if gpus else {"name": "none"}


def _gpu_reasons(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Another GPU model or compute capability on device 0.

    :param baseline: the baseline's hardware snapshot.
    :param current: this run's.
    """
    if "gpus" not in baseline or "gpus" not in current:
        return []
    old, new = _first_gpu(baseline), _first_gpu(current)
    return _field_reason("GPU", "name", old, new) + _field_reason(
        "GPU compute capability", "compute_capability", old, new
    )


def major_minor(version: str | None) -> str | None:
    """The ``major.minor`` of a version (``2.13.0+cpu`` -> ``2.13``), ``None`` when not installed.

    :param version: a distribution's version, or ``None``.
    """
    if version is None:
        return None
    match = re.match(r"\d+(\.\d+)?", str(version))
    return match.group(0) if match else str(version)


def _library_reasons(
    baseline: dict[str, Any], current: dict[str, Any], libraries: Iterable[str]
) -> list[str]:
    """Libraries whose major.minor differs, or which are installed on one side only.

    :param baseline: the baseline's hardware snapshot.
    :param current: this run's.
    :param libraries: the distributions the case runs on, e.g. ``torch``, ``onnxruntime``.
    """
    if "libraries" not in baseline or "libraries" not in current:
        return []
    old_libs, new_libs = baseline["libraries"] or {}, current["libraries"] or {}
    reasons = []
    for lib in libraries:
        old, new = major_minor(old_libs.get(lib)), major_minor(new_libs.get(lib))
        if old != new:
            reasons.append(f"{lib} {old or 'not installed'} -> {new or 'not installed'} (major.minor)")
    return reasons


def incomparable_reasons(
    baseline_hw: dict[str, Any], current_hw: dict[str, Any], libraries: Iterable[str], device: str
) -> list[str]:
    """Why a latency measured on ``baseline_hw`` says nothing about one on ``current_hw``; empty if comparable.

    Another CPU (model name, family/model/stepping, instruction sets, cores), architecture, and on
    CUDA another GPU model or compute capability, or another major.minor of a library the case runs
    on. Python patch versions, the clock, the OS and thread settings are drift, not reasons. A field
    an older snapshot lacks is not a difference.

    :param baseline_hw: the ``Hardware.to_dict()`` stored with the baseline (``{}`` when none).
    :param current_hw: this run's ``Hardware.to_dict()``.
    :param libraries: distribution names the case depends on: its backend's ``libraries``.
    :param device: the case's device, ``cpu`` or ``cuda``.
    """
    if not baseline_hw:
        return [NO_SNAPSHOT]
    reasons = _cpu_reasons(baseline_hw, current_hw)
    reasons += _field_reason("instruction sets", "isa", baseline_hw, current_hw)
    reasons += _field_reason("cores", "cpu_cores", baseline_hw, current_hw)
    reasons += _field_reason("architecture", "machine", baseline_hw, current_hw)
    if device == "cuda":
        reasons += _gpu_reasons(baseline_hw, current_hw)
    return reasons + _library_reasons(baseline_hw, current_hw, libraries)
