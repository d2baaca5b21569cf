"""The README's worked example, ``examples/custom_model``, run as a user runs it: ``pytest`` in a
copy of the folder, with its own conftest, matrix and models (a torch MLP and a random forest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_model"


def test_the_custom_model_example_runs_green(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("skl2onnx", reason="the classical extra is not installed")
    monkeypatch.setenv("PERFGATE_CACHE", str(shared_cache))
    monkeypatch.setenv("PERFGATE_RUNNER", "test-runner")
    for name in ("conftest.py", "matrix.toml", "my_models.py", "test_wine.py"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:anyio\n")
    # A subprocess: the example imports its own my_models, as a user's fresh interpreter does.
    result = pytester.runpytest_subprocess("--perf-report", "out")
    result.assert_outcomes(passed=12)
    report = (pytester.path / "out" / "report.md").read_text()
    for case in (
        "wine_mlp-int8_dynamic-onnxruntime_cpu-b16",
        "wine_forest-fp32-sklearn-b1",
        "wine_forest-fp32-onnxruntime_cpu-b256",
    ):
        assert f"| `{case}` |" in report
    # Never generated, with the example's reason: the forest has nothing to quantize, and no torch.
    listed = pytester.runpytest_subprocess("--collect-only", "-q")
    assert "wine_forest-int8_dynamic" not in listed.stdout.str()
    assert "wine_forest-fp32-torch_cpu" not in listed.stdout.str()
