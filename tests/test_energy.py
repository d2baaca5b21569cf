"""Energy per inference: RAPL's counter files and their wrap, the loop, the reasons where nothing
measures it, and NVML on a GPU runner (skipped, with its reason, elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfgate.energy import (
    EnergyReading,
    RaplCounter,
    counter_for,
    measure_energy,
    nvml_counter,
    rapl_counter,
)


def zone(root: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return folder


def test_rapl_sums_the_packages_not_their_subzones_and_survives_a_wrap(tmp_path: Path) -> None:
    package0 = zone(tmp_path, "intel-rapl:0", 999_000)
    package1 = zone(tmp_path, "intel-rapl:1", 10)
    zone(tmp_path, "intel-rapl:0:0", 5)  # core, inside package 0's figure
    counter = rapl_counter(tmp_path)
    assert isinstance(counter, RaplCounter)
    assert counter.zones == [package0, package1]
    assert counter.joules() == 0.0
    (package0 / "energy_uj").write_text("2000\n")  # wrapped at 1_000_000: 1_001 + 2_000 uj
    (package1 / "energy_uj").write_text("500010\n")  # +500_000 uj
    assert counter.joules() == pytest.approx((1_001 + 2_000 + 500_000) / 1e6)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda root: None, "has no RAPL package domain (intel-rapl:N)"),
        (lambda root: (root / "intel-rapl:0").mkdir(), "intel-rapl:0: the RAPL counter cannot be read"),
    ],
)
def test_rapl_says_why_it_cannot_measure(tmp_path: Path, setup: object, reason: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    found = rapl_counter(tmp_path)
    assert isinstance(found, str) and reason in found
    missing = rapl_counter(tmp_path / "nowhere")
    assert missing == (
        f"this machine has no {tmp_path / 'nowhere'} (no RAPL energy counter exposed: a VM, a container, "
        "or a CPU without one)"
    )


class Ticking:
    """A counter of 0.5 J per read: what the loop does with a counter, without a machine's noise."""

    name, scope = "rapl", "a test counter"

    def __init__(self) -> None:
        self.reads = 0

    def joules(self) -> float:
        self.reads += 1
        return 0.5 * self.reads


def test_the_loop_runs_its_duration_and_divides_by_the_samples() -> None:
    calls = []
    reading = measure_energy(lambda: calls.append(1), Ticking(), samples_per_call=8, duration_s=0.05)
    assert reading.measured and reading.source == "rapl" and reading.joules == 0.5
    assert reading.inferences == 8 * len(calls) and len(calls) > 10
    assert reading.joules_per_inference == pytest.approx(0.5 / reading.inferences)
    assert reading.samples_per_joule == pytest.approx(reading.inferences / 0.5)
    assert reading.duration_s >= 0.05


def test_a_counter_that_does_not_move_is_not_a_measurement() -> None:
    class Frozen(Ticking):
        def joules(self) -> float:
            return 7.0

    reading = measure_energy(lambda: None, Frozen(), samples_per_call=1, duration_s=0.01)
    assert not reading.measured and reading.joules_per_inference is None
    assert reading.reason is not None and reading.reason.startswith("the rapl counter did not move in")


def test_unavailable_here_with_the_reason() -> None:
    """This CI machine exposes no RAPL counter; a runner that does measures (a GPU runner: NVML)."""
    found = counter_for("cpu")
    if not isinstance(found, str):
        pytest.skip(f"this machine has a RAPL counter ({found.scope}): measured, not unavailable")
    assert "/sys/class/powercap" in found or "RAPL" in found
    assert EnergyReading("unavailable", False, found).to_dict()["joules_per_inference"] is None


def test_nvml_measures_a_gpu_loop() -> None:
    """Runs on a GPU runner: the board's counter moves while the GPU multiplies matrices."""
    counter = nvml_counter()
    if isinstance(counter, str):
        pytest.skip(counter)
    import torch

    a = torch.randn(2048, 2048, device="cuda")

    def step() -> None:
        (a @ a).sum().item()

    reading = measure_energy(step, counter, samples_per_call=1, duration_s=2.0)
    assert reading.measured and reading.source == "nvml" and reading.joules is not None
    assert 0.001 < reading.joules_per_inference < 100  # type: ignore[operator]


def test_a_run_reports_energy_or_why_not(perf_project: pytest.Pytester) -> None:
    result = perf_project.runpytest("perf", "-k", "fp32 and onnxruntime", "--perf-report", "out")
    result.assert_outcomes(passed=1)
    (case,) = json.loads((perf_project.path / "out" / "results.json").read_text())["cases"]
    energy = case["energy"]
    report = (perf_project.path / "out" / "report.md").read_text()
    assert "## Energy" in report
    if energy["measured"]:
        assert energy["joules_per_inference"] > 0 and energy["source"] == "rapl"
    else:
        assert energy["source"] == "unavailable" and energy["reason"] == counter_for("cpu")
        assert f"- Not measured on runner `test-runner` (1 cases): {energy['reason']}" in report
    off = perf_project.runpytest(
        "perf", "-k", "fp32 and onnxruntime", "--perf-energy-s", "0", "--perf-report", "off"
    )
    off.assert_outcomes(passed=1)
    (case,) = json.loads((perf_project.path / "off" / "results.json").read_text())["cases"]
    assert case["energy"] is None
    bad = perf_project.runpytest("perf", "--perf-energy-s", "-1")
    bad.stderr.fnmatch_lines(["*--perf-energy-s -1.0: seconds >= 0 (0: do not measure energy)*"])


def test_measured_energy_is_a_third_pareto_axis() -> None:
    """Without energy, the slower of two equally accurate cases is off the frontier; with energy
    measured for every case, it is back on it when it spends less per inference."""
    from perfgate.pareto import Score
    from perfgate.results import CaseResult
    from perfgate.stats import LatencyStats

    def case(name: str, p50_ms: float, joules: float | None) -> CaseResult:
        result = CaseResult(name, "m", "t", "b", 1, "cpu", "r")
        result.latency = LatencyStats.from_samples([p50_ms / 1e3] * 20, 1)
        result.accuracy = {"metric": 0.9, "metric_direction": "higher"}
        if joules is not None:
            result.energy = {"measured": True, "joules_per_inference": joules}
        return result

    score = Score("top1")
    assert score.front([case("fast", 1.0, None), case("slow", 2.0, None)]) == {"fast": True, "slow": False}
    assert score.front([case("fast", 1.0, 0.5), case("slow", 2.0, 0.1)]) == {"fast": True, "slow": True}
    assert score.front([case("fast", 1.0, 0.1), case("slow", 2.0, 0.5)]) == {"fast": True, "slow": False}
    # One case without a measurement: energy is no axis at all (never half a comparison).
    assert score.front([case("fast", 1.0, 0.5), case("slow", 2.0, None)]) == {"fast": True, "slow": False}


def test_the_report_shows_measured_energy_and_links_its_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from perfgate.report import render
    from perfgate.results import CaseResult, ResultsDocument
    from perfgate.stats import LatencyStats

    cases = []
    for name, p50_ms, joules in (("m-fp32-torch_cpu-b1", 2.0, 0.004), ("m-fp32-onnxruntime_cpu-b1", 1.0, 0.001)):
        technique, backend = name.split("-")[1:3]
        result = CaseResult(name, "m", technique, backend, 1, "cpu", "r")
        result.latency = LatencyStats.from_samples([p50_ms / 1e3] * 20, 1)
        result.accuracy = {"metric": 0.9, "metric_name": "top1", "metric_direction": "higher", "metric_delta": 0.0,
                           "fidelity": {"top1_agreement": 1.0}}  # fmt: skip
        result.energy = EnergyReading("rapl", True, scope="CPU package", joules=joules * 1000, inferences=1000,
                                      duration_s=1.0).to_dict()  # fmt: skip
        cases.append(result)
    written = render(tmp_path, [ResultsDocument({"runner": "r"}, cases)])
    assert tmp_path / "pareto-m-energy.png" in written
    report = (tmp_path / "report.md").read_text()
    assert "![top1 against energy per inference, m](pareto-m-energy.png)" in report
    assert "| `m-fp32-onnxruntime_cpu-b1` | r | rapl (CPU package) | 0.001 | 1000 | 1.00 s, 1000 samples |" in report
