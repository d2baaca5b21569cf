"""Runner identity: which silicon a baseline belongs to, and when a baseline cannot be compared."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

import perfgate.backends as backends_module
from perfgate.backends import BACKENDS, Backend
from perfgate.drift import hardware_drift, incomparable_reasons
from perfgate.hardware import Hardware, cpu_fields, cpu_signature, detect, recorded_libraries, slug
from perfgate.registry import Registry

FLAGS_ZEN3 = "fpu sse sse2 avx avx2 fma bmi2 sha_ni vaes"
FLAGS_ZEN4 = FLAGS_ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni"
MILAN = f"""processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: {FLAGS_ZEN3}
"""
GENOA = f"""processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: {FLAGS_ZEN4}
"""
SAPPHIRE_RAPIDS = f"""processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: {FLAGS_ZEN4} amx_bf16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def _runner(cpuinfo: str, cores: int = 2, machine: str = "x86_64") -> str:
    """The runner id of a machine with this cpuinfo.

    :param cpuinfo: literal /proc/cpuinfo text.
    :param cores: its core count.
    :param machine: its architecture.
    """
    return Hardware(cpu_cores=cores, machine=machine, **cpu_fields(cpuinfo)).runner_id()


def _snapshot(**changes: Any) -> dict[str, Any]:
    """A Genoa runner's ``Hardware.to_dict()`` with ``changes`` applied.

    :param changes: fields to override.
    """
    base = Hardware(
        cpu_cores=2, machine="x86_64", libraries={"torch": "2.13.0", "numpy": "2.4.6"}, **cpu_fields(GENOA)
    )
    return {**base.to_dict(), **changes}


def test_epyc_generations_sharing_a_model_name_get_different_runner_ids() -> None:
    """Milan and Genoa both report "AMD EPYC"; the signature and ISA tiers keep their baselines apart."""
    assert _runner(MILAN) == "amd-epyc-f25m1s1-2c"
    assert _runner(GENOA) == "amd-epyc-f25m17s1-avx512-vnni-2c"


def test_intel_xeon_with_amx_names_all_three_tiers_in_fixed_order() -> None:
    """A Sapphire Rapids Xeon's id carries its signature and avx512, vnni, amx in that order."""
    assert _runner(SAPPHIRE_RAPIDS, cores=8) == "intel-xeon-platinum-8480-f6m143s8-avx512-vnni-amx-8c"


def test_arm_signature_comes_from_implementer_part_variant() -> None:
    """On ARM the signature is CPU implementer/part/variant and asimd is reported as neon."""
    assert cpu_signature(GRAVITON3) == ("0x41", "0xd40", "0x1")
    fields = cpu_fields(GRAVITON3)
    assert {"neon", "neon_dotprod"} <= set(fields["isa"])
    assert _runner(GRAVITON3, cores=4, machine="aarch64").endswith("-f0x41m0xd40s0x1-4c")


def test_unknown_signature_is_none_and_left_out_of_the_id() -> None:
    """Without signature lines the fields are None and the id is model slug plus cores, as before."""
    text = "model name\t: Some CPU\nflags\t: avx2\n"
    assert cpu_signature(text) == (None, None, None)
    assert _runner(text) == "some-2c"


def test_this_machines_id_starts_with_the_model_and_ends_with_the_cores() -> None:
    """The detected id begins with the model name's slug and, without a GPU, ends with the core count."""
    hardware = detect()
    runner = hardware.runner_id()
    assert runner.startswith(slug(hardware.cpu_model))
    if not hardware.gpus:
        assert runner.endswith(f"-{hardware.cpu_cores}c")


def test_same_machine_is_comparable() -> None:
    """Identical snapshots give no reason, for CPU and CUDA cases alike."""
    assert incomparable_reasons(_snapshot(), _snapshot(), ["torch"], "cpu") == []
    assert incomparable_reasons(_snapshot(), _snapshot(), ["torch"], "cuda") == []


def test_another_cpu_signature_is_incomparable_and_named() -> None:
    """Another family/model under the same model name is a reason naming both CPUs."""
    milan = _snapshot(cpu_model_number="1")
    assert incomparable_reasons(milan, _snapshot(), [], "cpu") == [
        "CPU model: AMD EPYC f25m1s1 -> AMD EPYC f25m17s1"
    ]


def test_cores_isa_and_architecture_are_reasons() -> None:
    """Another core count, instruction set list or architecture each make a reason."""
    other = _snapshot(cpu_cores=4, isa=["avx2"], machine="aarch64")
    assert incomparable_reasons(_snapshot(), other, [], "cpu") == [
        "instruction sets: avx2,avx512,avx512_bf16,vnni -> avx2",
        "cores: 2 -> 4",
        "architecture: x86_64 -> aarch64",
    ]


def test_only_major_minor_library_changes_are_reasons() -> None:
    """torch 2.13.0 -> 2.13.1 is comparable; 2.13 -> 2.14, or a library appearing, is not."""
    patch = _snapshot(libraries={"torch": "2.13.1+cpu", "numpy": "2.4.6"})
    assert incomparable_reasons(_snapshot(), patch, ["torch"], "cpu") == []
    minor = _snapshot(libraries={"torch": "2.14.0", "numpy": "2.4.6"})
    assert incomparable_reasons(_snapshot(), minor, ["torch"], "cpu") == ["torch 2.13 -> 2.14 (major.minor)"]
    added = _snapshot(libraries={"torch": "2.13.0", "numpy": "2.4.6", "onnxruntime": "1.31.1"})
    assert incomparable_reasons(_snapshot(), added, ["onnxruntime"], "cpu") == [
        "onnxruntime not installed -> 1.31 (major.minor)"
    ]


def test_a_library_the_case_does_not_use_is_no_reason() -> None:
    """A new numpy minor does not make a case that depends only on torch incomparable."""
    other = _snapshot(libraries={"torch": "2.13.0", "numpy": "2.5.0"})
    assert incomparable_reasons(_snapshot(), other, ["torch"], "cpu") == []


def test_gpu_changes_count_only_for_cuda_cases() -> None:
    """Another GPU name is a reason for a CUDA case and none for a CPU case."""
    a10g = _snapshot(gpus=[{"name": "NVIDIA A10G", "compute_capability": "8.6"}])
    l4 = _snapshot(gpus=[{"name": "NVIDIA L4", "compute_capability": "8.6"}])
    assert incomparable_reasons(a10g, l4, [], "cuda") == ["GPU: NVIDIA A10G -> NVIDIA L4"]
    assert incomparable_reasons(a10g, l4, [], "cpu") == []


def test_python_patch_clock_os_are_drift_not_reasons() -> None:
    """A Python patch release, a clock reading or another OS name stay plain drift."""
    other = _snapshot(python="3.11.9", system="Darwin", hz_actual=3.4e9)
    assert incomparable_reasons(_snapshot(hz_actual=2.1e9), other, ["torch"], "cpu") == []
    assert [d.what for d in hardware_drift(_snapshot(), other)] == ["python", "system"]


def test_missing_snapshot_has_a_single_reason() -> None:
    """A baseline without a hardware snapshot is incomparable until refreshed."""
    assert incomparable_reasons({}, _snapshot(), ["torch"], "cpu") == [
        "the baseline has no hardware snapshot (refresh it)"
    ]


def test_an_old_snapshot_without_signature_is_compared_on_what_it_has() -> None:
    """A snapshot from before the signature was recorded: absence is no reason, but its ISA still is."""
    old = {
        k: v for k, v in _snapshot().items() if k not in ("cpu_family", "cpu_model_number", "cpu_stepping")
    }
    assert incomparable_reasons(old, _snapshot(), ["torch"], "cpu") == []
    assert hardware_drift(old, _snapshot()) == []
    milan_now = _snapshot(cpu_model_number="1", isa=["avx2"])
    assert incomparable_reasons(old, milan_now, ["torch"], "cpu") == [
        "instruction sets: avx2,avx512,avx512_bf16,vnni -> avx2"
    ]


# ---- recorded libraries (end to end through the conftest hook: tests/test_registration.py) -----


def recorded_version() -> str:
    return importlib.metadata.version("pluggy")


def test_recorded_libraries_follow_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core distributions and each registered backend's, one registered after the machine was
    detected included: its version is recorded and a change of it is drift (perfgate's own lists
    never named pluggy)."""
    registry: Registry[Backend] = Registry("backend")
    registry.register("torch_cpu", BACKENDS.get("torch_cpu"))
    monkeypatch.setattr(backends_module, "BACKENDS", registry)
    assert recorded_libraries() == ("numpy", "onnx", "torch")
    assert "pluggy" not in detect().libraries
    mine = type("Mine", (Backend,), {"name": "mine", "marker": "mine", "libraries": ("pluggy",)})()
    registry.register("mine", mine)
    assert recorded_libraries() == ("numpy", "onnx", "pluggy", "torch")
    assert detect().libraries["pluggy"] == recorded_version()
    old, new = detect().to_dict(), detect().to_dict()
    old["libraries"] = {**new["libraries"], "pluggy": "0.1.0"}
    assert [d.line() for d in hardware_drift(old, new)] == [f"library pluggy: 0.1.0 -> {recorded_version()}"]
