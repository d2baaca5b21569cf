"""perfgate's Python API: the same run as ``pytest perf``, from a notebook or a script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import perfgate
from tests.conftest import TESTS, TINY_MATRIX

MLP_TORCH = "tiny_mlp-fp32-torch_cpu-b1"
MLP_INT8 = "tiny_mlp-int8_dynamic-onnxruntime_cpu-b1"


@pytest.fixture
def api_project(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A matrix in a folder without any test module: the API brings perfgate's own test."""
    monkeypatch.setenv("PERFGATE_CACHE", str(shared_cache))
    monkeypatch.delenv("PERFGATE_RUNNER", raising=False)
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "matrix.toml").write_text(TINY_MATRIX.format(tests=TESTS.as_posix()))
    return tmp_path


def test_run_selects_exactly_the_cases_and_returns_the_report_document(api_project: Path) -> None:
    results = perfgate.run(
        api_project / "perf" / "matrix.toml",
        select=[MLP_TORCH, MLP_INT8],
        root=api_project,
        runner="api-runner",
        report=api_project / "report",
        refresh=True,
        repeats=2,
    )
    assert results.passed and results.exit_code == 0
    assert [r.case_id for r in results.cases] == [MLP_TORCH, MLP_INT8]
    int8 = results.case(MLP_INT8)
    assert int8.status == "passed" and int8.accuracy_passed and int8.latency is not None
    assert [s["kind"] for s in int8.sessions] == ["first", "repeat"]  # the same passes as pytest's
    assert results.document.runner == "api-runner"
    # The document is the one --perf-report wrote, and the refresh went to <root>/baselines.
    written = json.loads((api_project / "report" / "results.json").read_text())
    assert [c["case_id"] for c in written["cases"]] == [MLP_TORCH, MLP_INT8]
    assert results.document.meta["run_id"] == written["run_id"]
    baseline = json.loads(next((api_project / "baselines" / "api-runner").glob("*.json")).read_text())
    assert set(baseline["perfgate"]["cases"]) == {MLP_TORCH, MLP_INT8}
    with pytest.raises(KeyError, match="no case 'nope' in this run"):
        results.case("nope")


def test_run_case_gates_against_the_baseline(api_project: Path) -> None:
    matrix = api_project / "perf" / "matrix.toml"
    perfgate.run(matrix, select=[MLP_TORCH], root=api_project, runner="r", refresh=True)
    result = perfgate.run_case(matrix, MLP_TORCH, root=api_project, runner="r", compare=True)
    assert result.case_id == MLP_TORCH
    verdict = result.verdict("regression")
    assert verdict is not None and verdict.status == "pass"


def test_unknown_case_and_missing_matrix_are_errors_that_name_them(api_project: Path) -> None:
    matrix = api_project / "perf" / "matrix.toml"
    with pytest.raises(perfgate.RunError, match=r"no such case.*tiny_mlp-fp32-tensorrt-b1"):
        perfgate.run(matrix, select=["tiny_mlp-fp32-tensorrt-b1"], root=api_project)
    with pytest.raises(perfgate.RunError, match=r"missing\.toml: no such matrix file"):
        perfgate.run(api_project / "missing.toml")


def test_build_case_gives_a_runtime_to_time_yourself(api_project: Path) -> None:
    built = perfgate.build_case(api_project / "perf" / "matrix.toml", MLP_INT8, root=api_project)
    try:
        assert built.runtime is not None and built.model is not None
        built.runtime.bind(built.model.data.example(1))
        built.runtime.run()
    finally:
        built.close()


def test_import_perfgate_is_light() -> None:
    """The API names resolve lazily: importing perfgate (which pytest's entry point does in every
    run of the environment) must not import torch."""
    import subprocess
    import sys

    code = "import sys, perfgate, perfgate.plugin; print(sorted(m for m in ('torch', 'numpy', 'onnxruntime', 'openvino') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(perfgate.run) and "run" in dir(perfgate)
