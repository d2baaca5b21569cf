"""Profile on failure: each backend's own profiler, the summary a refresh stores with the
baseline, and the report that names the operators whose time grew, with real slowdowns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MATRIX_HEADER, write_project
from perfgate.backends import BACKENDS
from perfgate.baselines import BaselineError, load_baseline
from perfgate.profiling import OTHER, OperatorProfile, ProfileUnavailable, growth, growth_lines

PROBE_MATRIX = MATRIX_HEADER + """
[threads]
intra_op = 1
inter_op = 1

[models.probed_mlp]
factory = "tiny_models:probed_mlp"
data = "tiny_models:blobs"
metric = "top1"

[techniques.fp32]

[backends.torch_cpu]
[backends.onnxruntime_cpu]
"""


# ---- the arithmetic ---------------------------------------------------------------------------


def test_growth_ranks_what_grew_and_ignores_what_shrank() -> None:
    then = {"aten::mm": 2.0, "aten::addmm": 10.0, "aten::relu": 3.0, OTHER: 1.0}
    now = {"aten::mm": 50.0, "aten::addmm": 9.0, "aten::relu": 4.0, "aten::tanh": 7.0, OTHER: 90.0}
    grown = growth(now, then)
    assert [(g.operator, g.baseline_us, g.current_us) for g in grown] == [
        ("aten::mm", 2.0, 50.0),
        ("aten::tanh", None, 7.0),  # new: no baseline time
        ("aten::relu", 3.0, 4.0),
    ]
    assert grown[0].delta_us == 48.0 and grown[0].ratio == 25.0 and grown[1].ratio is None
    assert growth(now, then, top=1)[0].operator == "aten::mm"


def test_a_summary_keeps_the_slowest_and_sums_the_rest() -> None:
    profile = OperatorProfile("p", 10, {f"op{i}": float(i) for i in range(1, 6)}, ["/x/trace.json"])
    assert profile.summary(keep=2) == {
        "source": "p",
        "runs": 10,
        "operators_us": {"op5": 5.0, "op4": 4.0, OTHER: 6.0},
    }


def test_what_a_report_says_for_each_kind_of_profile() -> None:
    assert growth_lines(None) == []
    assert growth_lines({"trigger": "failure", "unavailable": "LiteRT has none"}) == [
        "profile: unavailable: LiteRT has none"
    ]
    current = {"source": "onnxruntime", "runs": 20, "operators_us": {"/a (MatMul)": 9.0, "/b (Add)": 1.0}}
    assert growth_lines({"trigger": "failure", **current}) == [
        "profile (onnxruntime, 20 calls), the baseline has no profile to compare with (a refresh stores "
        "one); slowest operators: /a (MatMul) 9.0 us; /b (Add) 1.0 us"
    ]
    compared = {
        "trigger": "failure",
        **current,
        "baseline_operators_us": {"/a (MatMul)": 3.0, "/b (Add)": 1.0},
    }
    assert growth_lines(compared) == [
        "profile (onnxruntime, 20 calls), operators that grew most against the baseline's: "
        "/a (MatMul) 3.0 -> 9.0 us (+6.0 us, x3.00)"
    ]


def test_onnxruntime_node_times_from_its_trace(tmp_path: Path) -> None:
    from perfgate.backends.onnxruntime import node_times

    trace = tmp_path / "ort.json"
    events = [
        {"cat": "Session", "name": "model_loading_uri", "dur": 900},
        {"cat": "Node", "name": "/fc/Gemm_kernel_time", "dur": 30, "args": {"op_name": "Gemm"}},
        {"cat": "Node", "name": "/fc/Gemm_fence_before", "dur": 1, "args": {"op_name": "Gemm"}},
        {"cat": "Node", "name": "/fc/Gemm_kernel_time", "dur": 50, "args": {"op_name": "Gemm"}},
        {"cat": "Node", "name": "/Relu_kernel_time", "dur": 4, "args": {"op_name": "Relu"}},
    ]
    trace.write_text(json.dumps(events))
    assert node_times(trace, 2) == {"/fc/Gemm (Gemm)": 40.0, "/Relu (Relu)": 2.0}


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        ("litert_cpu", "LiteRT's Python interpreter offers no per-operator profiler"),
        ("sklearn", "an estimator's predict is one library call"),
    ],
)
def test_a_backend_without_a_profiler_says_so(backend: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ProfileUnavailable, match=reason):
        BACKENDS.get(backend).profile(None, None, None, None, None, tmp_path)  # type: ignore[arg-type]


# ---- a real slowdown in one operator ------------------------------------------------------------


@pytest.fixture
def probe_project(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    monkeypatch.delenv("PERFGATE_TEST_PROBE_WIDTH", raising=False)
    return write_project(pytester, shared_cache, monkeypatch, PROBE_MATRIX)


def test_a_regression_names_the_operator_that_slowed(
    probe_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe matmul widened 2048x (16x64 -> 16x131072) is the top grower on torch and on ONNX
    Runtime; the refresh stored each case's profile with the baseline."""
    refresh = probe_project.runpytest("perf", "--perf-refresh-baselines")
    refresh.assert_outcomes(passed=2)
    baseline = load_baseline(probe_project.path / "baselines" / "test-runner" / "0001_baseline.json")
    assert baseline is not None
    torch_then = baseline.cases["probed_mlp-fp32-torch_cpu-b1"].profile
    ort_then = baseline.cases["probed_mlp-fp32-onnxruntime_cpu-b1"].profile
    assert (
        torch_then is not None
        and torch_then["source"] == "torch.profiler"
        and "aten::mm" in torch_then["operators_us"]
    )
    assert (
        ort_then is not None
        and ort_then["source"] == "onnxruntime"
        and "/MatMul (MatMul)" in ort_then["operators_us"]
    )

    monkeypatch.setenv("PERFGATE_TEST_PROBE_WIDTH", "131072")
    result = probe_project.runpytest("perf", "--benchmark-compare", "--perf-report", "out")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "probed_mlp-fp32-torch_cpu-b1: profile (torch.profiler, * calls), operators that grew most against "
        "the baseline's: aten::mm *",
        "probed_mlp-fp32-onnxruntime_cpu-b1: profile (onnxruntime, * calls), operators that grew most "
        "against the baseline's: /MatMul (MatMul) *",
    ])  # fmt: skip
    report = (probe_project.path / "out" / "report.md").read_text()
    section = report[report.index("## Where the time went") :]
    for case, top in (
        ("probed_mlp-fp32-torch_cpu-b1", "aten::mm"),
        ("probed_mlp-fp32-onnxruntime_cpu-b1", "/MatMul (MatMul)"),
    ):
        block = section[section.index(f"### `{case}` (regressed") :]
        first_row = block.split("|---|---|---|---|---|\n", 1)[1].splitlines()[0]
        assert first_row.startswith(f"| `{top}` |"), first_row
    document = json.loads((probe_project.path / "out" / "results.json").read_text())
    for case in document["cases"]:
        assert case["profile"]["trigger"] == "failure"
        for name in case["profile"]["files"]:
            assert not Path(name).is_absolute() and (probe_project.path / "out" / name).is_file()


def test_profiles_only_where_asked(probe_project: pytest.Pytester) -> None:
    """No profile without a trigger; --perf-trace-case profiles a passing case; under the gate,
    --perf-no-trace-failures leaves even a failure unprofiled (checked on a case that passes:
    no profile either way), and the two flags together are refused."""
    plain = probe_project.runpytest("perf", "--perf-report", "plain")
    plain.assert_outcomes(passed=2)
    cases = json.loads((probe_project.path / "plain" / "results.json").read_text())["cases"]
    assert [c["profile"] for c in cases] == [None, None]
    asked = probe_project.runpytest(
        "perf", "--perf-trace-case", "probed_mlp-fp32-onnxruntime_cpu-b1", "--perf-report", "asked"
    )
    asked.assert_outcomes(passed=2)
    cases = {
        c["case_id"]: c
        for c in json.loads((probe_project.path / "asked" / "results.json").read_text())["cases"]
    }
    assert cases["probed_mlp-fp32-onnxruntime_cpu-b1"]["profile"]["trigger"] == "request"
    assert cases["probed_mlp-fp32-torch_cpu-b1"]["profile"] is None
    both = probe_project.runpytest("perf", "--perf-trace-failures", "--perf-no-trace-failures")
    both.stderr.fnmatch_lines(["*--perf-trace-failures and --perf-no-trace-failures contradict each other*"])


def test_a_malformed_stored_profile_names_the_file_and_case(probe_project: pytest.Pytester) -> None:
    probe_project.runpytest("perf", "--perf-refresh-baselines", "-k", "torch").assert_outcomes(passed=1)
    path = probe_project.path / "baselines" / "test-runner" / "0001_baseline.json"
    data = json.loads(path.read_text())
    data["perfgate"]["cases"]["probed_mlp-fp32-torch_cpu-b1"]["profile"] = {
        "operators_us": {"aten::mm": "fast"}
    }
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match="case probed_mlp-fp32-torch_cpu-b1: 'profile' is not a table"):
        load_baseline(path)
