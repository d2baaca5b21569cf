"""A backend registered from a user's conftest gets what the built-in ones get, with no edit to
perfgate: its pytest marker (registered, so --strict-markers accepts it, and listed by --markers),
its skip reason where its library is missing, and its libraries in the drift check."""

from __future__ import annotations

import json

import pytest

FANCY_CONFTEST = """
from perfgate.backends.torch_eager import LOWERINGS, TorchEagerBackend


class Fancy(TorchEagerBackend):
    marker = "fancy"
    libraries = ("pyyaml",)  # installed with perfgate's test extra: its version is recorded


class Absent(TorchEagerBackend):
    marker = "absent"
    requires = ("absent_runtime_xyz",)
    install_hint = "pip install absent-runtime"


def pytest_perfgate_register(backends, techniques, metrics):
    backends.register("fancy_cpu", Fancy("fancy_cpu", "cpu", frozenset(LOWERINGS)))
    backends.register("absent_cpu", Absent("absent_cpu", "cpu", frozenset(LOWERINGS)))
"""


def test_a_registered_backend_gets_its_marker_skip_reason_and_drift_entry(perf_project: pytest.Pytester) -> None:
    perf_project.makeconftest(FANCY_CONFTEST)
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + "\n[backends.fancy_cpu]\n[backends.absent_cpu]\n")

    markers = perf_project.runpytest("perf", "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.absent: perfgate cases on absent_cpu", "@pytest.mark.fancy: perfgate cases on fancy_cpu"])

    # --strict-markers: the marker is registered; the absent backend's cases skip with its reason.
    result = perf_project.runpytest(
        "perf", "--strict-markers", "-m", "fancy or absent", "-k", "fp32", "--perf-refresh-baselines", "-rs"
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*absent_cpu*absent_runtime_xyz*"])

    # The baseline recorded the backend's library; a different version there is drift.
    baseline_file = next((perf_project.path / "baselines" / "test-runner").glob("*.json"))
    baseline = json.loads(baseline_file.read_text())
    machine = baseline["machine_info"]["perfgate"]
    assert "pyyaml" in machine["libraries"]
    machine["libraries"]["pyyaml"] = "0.0.1"
    baseline_file.write_text(json.dumps(baseline))
    compared = perf_project.runpytest("perf", "-m", "fancy", "-k", "fp32", "--benchmark-compare")
    compared.stdout.fnmatch_lines(["*library pyyaml*0.0.1*"])
