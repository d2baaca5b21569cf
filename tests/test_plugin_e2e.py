"""End-to-end: the plugin drives a real matrix through pytester."""

from __future__ import annotations

import importlib.util
import json

import pytest

from perfgate.results import load_results


def _cases(project: pytest.Pytester, folder: str) -> dict[str, dict]:
    document = json.loads((project.path / folder / "results.json").read_text())
    return {case["case_id"]: case for case in document["cases"]}


def test_runs_every_case_reports_it_and_reuses_the_cache(perf_project: pytest.Pytester) -> None:
    """Every combination runs, passes its gates, and lands in results.json with its figures; -v
    shows each case's place in the matrix; a second run takes weights and exported models from
    the artifact cache. One run of the whole tiny matrix serves every check: each costs seconds."""
    result = perf_project.runpytest("perf", "-v", "--perf-report", "out")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*model tiny_mlp*", "*tiny_mlp-fp32-onnxruntime_cpu-b1*"])
    result.stdout.fnmatch_lines(
        ["*perfgate: [[]1/4] tiny_mlp-*-b1: building*", "*perfgate: [[]4/4] tiny_mlp-*-b1: timing*"]
    )
    out = perf_project.path / "out"
    plots = {"pareto-tiny_mlp.png"} if importlib.util.find_spec("matplotlib") else set()
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", *plots}
    cases = _cases(perf_project, "out")
    assert sorted(cases) == [
        "tiny_mlp-fp32-onnxruntime_cpu-b1",
        "tiny_mlp-fp32-torch_cpu-b1",
        "tiny_mlp-int8_dynamic-onnxruntime_cpu-b1",
        "tiny_mlp-int8_dynamic-torch_cpu-b1",
    ]
    for case in cases.values():
        assert case["latency"]["p50_ms"] > 0 and case["latency"]["rounds"] >= 30
        assert len(case["samples_s"]) == case["latency"]["rounds"]
        assert case["accuracy"]["metric"] >= 0.95
    loaded = load_results(out / "results.json")
    assert len(loaded.cases) == 4 and loaded.runner == "test-runner"
    assert loaded.meta["machine"]["cpu_cores"] >= 1
    assert (out / "report.md").read_text().startswith("# perfgate report: runner `test-runner`")

    warm = perf_project.runpytest("perf", "-k", "onnxruntime", "--perf-report", "warm")
    warm.assert_outcomes(passed=2)
    cases = _cases(perf_project, "warm")
    assert sorted(cases) == ["tiny_mlp-fp32-onnxruntime_cpu-b1", "tiny_mlp-int8_dynamic-onnxruntime_cpu-b1"]
    assert all(c["build_cached"] for c in cases.values())
    assert all(c["build_s"] > 0 for c in cases.values())  # the original conversion cost is still reported


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "perfgate: ML inference benchmarks with accuracy and regression gates:",
            "*--perf-matrix=PATH*",
            "*--perf-runner=NAME*",
            "*--perf-refresh-baselines*",
            "*--perf-require-baseline*",
            "*--perf-report=DIR*",
        ]
    )


NOISY_TECHNIQUE_CONFTEST = '''
import torch
from perfgate.techniques import Technique


class NoisyWeights(Technique):
    """Adds heavy Gaussian noise to every weight: a real accuracy drop."""

    def transform(self, model, ctx):
        noisy = type(model)()
        noisy.load_state_dict(model.state_dict())
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * p.abs().mean() * 3.0)
        return noisy.eval()

    def transform_key(self, options):
        return "noisy-weights-v1"


def pytest_perfgate_register(backends, techniques, metrics):
    techniques.register("noisy", NoisyWeights(name="noisy", description="damaged weights", family="quantized"))
'''


def test_nan_outputs_fail_and_the_session_goes_on(perf_project: pytest.Pytester) -> None:
    """One broken model fails its own cases only; the others still run and pass."""
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(
        matrix.read_text()
        + '\n[models.broken]\nfactory = "tiny_models:nan_model"\ndata = "tiny_models:blobs"\n'
    )
    result = perf_project.runpytest("perf", "-k", "fp32")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        ["*broken-fp32-torch_cpu-b1: accuracy gate failed*", "*outputs contain NaN or Inf*"]
    )


def test_refresh_then_compare_twice_on_unchanged_code(perf_project: pytest.Pytester) -> None:
    """The baseline is written for this runner, and unchanged code passes --benchmark-compare."""
    refreshed = perf_project.runpytest("perf", "-k", "fp32", "--perf-refresh-baselines")
    refreshed.assert_outcomes(passed=2)
    refreshed.stdout.fnmatch_lines(
        ["*baselines of runner 'test-runner'*", "*added  tiny_mlp-fp32-torch_cpu-b1*"]
    )
    baseline = perf_project.path / "baselines" / "test-runner" / "0001_baseline.json"
    data = json.loads(baseline.read_text())
    assert data["perfgate"]["schema_version"] == 1
    assert sorted(data["perfgate"]["cases"]) == [
        "tiny_mlp-fp32-onnxruntime_cpu-b1",
        "tiny_mlp-fp32-torch_cpu-b1",
    ]
    assert all(len(b["stats"]["data"]) >= 30 for b in data["benchmarks"])
    for _ in range(2):
        compared = perf_project.runpytest("perf", "-k", "fp32", "--benchmark-compare")
        compared.assert_outcomes(passed=2)


def test_an_accuracy_drop_fails_the_case_with_its_figures_and_is_never_stored(
    perf_project: pytest.Pytester,
) -> None:
    """A technique that really damages the model fails its gate; the message gives values and
    limits, and a refresh stores the passing case only."""
    perf_project.makeconftest(NOISY_TECHNIQUE_CONFTEST)
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + "\n[techniques.noisy]\n")
    result = perf_project.runpytest("perf", "-k", "torch_cpu and (noisy or fp32)", "--perf-refresh-baselines")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tiny_mlp-noisy-torch_cpu-b1: accuracy gate failed*",
            "*task_metric: top1 0.* vs reference 1.0000 (higher is better): falls below the required 0.9900 (99.00% of the reference)*",
        ]
    )
    result.stdout.fnmatch_lines(["*kept-out  tiny_mlp-noisy-torch_cpu-b1*failed its accuracy gate*"])
    data = json.loads((perf_project.path / "baselines" / "test-runner" / "0001_baseline.json").read_text())
    assert list(data["perfgate"]["cases"]) == ["tiny_mlp-fp32-torch_cpu-b1"]


def test_corrupt_baseline_is_an_error_naming_the_file(perf_project: pytest.Pytester) -> None:
    baseline = perf_project.path / "baselines" / "test-runner" / "0001_baseline.json"
    baseline.parent.mkdir(parents=True)
    baseline.write_text('{"benchmarks": [')
    result = perf_project.runpytest("perf", "--benchmark-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*baseline {baseline} is not valid JSON*git checkout -- {baseline}*"])
    assert baseline.read_text() == '{"benchmarks": ['


MISSING_BACKEND_CONFTEST = """
from perfgate.backends.onnxruntime import OnnxRuntimeCpuBackend


class FancyBackend(OnnxRuntimeCpuBackend):
    name = "fancy_cpu"
    requires = ("fancy_runtime_that_is_not_installed",)
    install_hint = "pip install fancy-runtime"


def pytest_perfgate_register(backends, techniques, metrics):
    backends.register("fancy_cpu", FancyBackend())
"""


def test_a_missing_backend_skips_with_its_reason(perf_project: pytest.Pytester) -> None:
    perf_project.makeconftest(MISSING_BACKEND_CONFTEST)
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + "\n[backends.fancy_cpu]\n")
    result = perf_project.runpytest("perf", "-k", "fancy", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        ["*fancy_cpu: fancy_runtime_that_is_not_installed is not installed (pip install fancy-runtime)*"]
    )


def test_gpu_selection_on_a_cpu_runner_exits_zero_with_the_reason(perf_project: pytest.Pytester) -> None:
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + "\n[backends.torch_cuda]\n")
    result = perf_project.runpytest("perf", "-m", "gpu", "-rs")
    assert result.ret == 0
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no CUDA device*"])
    matrix.write_text(matrix.read_text().replace("[backends.torch_cuda]", ""))
    result = perf_project.runpytest("perf", "-m", "gpu")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*perfgate: no case selected by -m 'gpu'*exiting 0*"])


def test_accuracy_gates_alone_in_parallel(perf_project: pytest.Pytester) -> None:
    """`-n 2 --benchmark-disable`: gates run on xdist workers, results reach the controller."""
    result = perf_project.runpytest("perf", "-n", "2", "--benchmark-disable", "--perf-report", "out")
    result.assert_outcomes(passed=4)
    cases = json.loads((perf_project.path / "out" / "results.json").read_text())["cases"]
    assert len(cases) == 4 and all(c["latency"] is None and c["accuracy"]["metric"] > 0.95 for c in cases)
