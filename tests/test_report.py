"""Reports: the Pareto frontier, the results.json schema, report.md and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfgate.gates import Verdict
from perfgate.jsonio import dumps_stable
from perfgate.pareto import dominates, pareto_front
from perfgate.report import report_markdown, results_document, write_report
from perfgate.results import RESULTS_SCHEMA_VERSION, CaseResult, ResultsDocument, ResultsError, load_results
from perfgate.stats import LatencyStats


def make_case(
    model: str = "m",
    technique: str = "fp32",
    backend: str = "torch_cpu",
    p50_ms: float = 1.0,
    metric: float = 0.9,
    runner: str = "r1",
    verdicts: list[Verdict] | None = None,
    status: str = "passed",
) -> CaseResult:
    """A case as the plugin records it, with samples spread around ``p50_ms``."""
    samples = [p50_ms * 1e-3 * (1 + 0.01 * ((i % 7) - 3)) for i in range(50)]
    return CaseResult(
        case_id=f"{model}-{technique}-{backend}-b1",
        model=model,
        technique=technique,
        backend=backend,
        batch_size=1,
        device="cpu",
        runner=runner,
        status=status,
        artifact_bytes=int(100_000 * (0.3 if "int8" in technique else 1.0)),
        settings={"intra_op_threads": 1},
        accuracy={
            "metric_name": "top1",
            "metric": metric,
            "reference_metric": 0.9,
            "metric_delta": metric - 0.9,
            "eval_samples": 100,
            "fidelity": {
                "top1_agreement": 1.0,
                "sqnr_db": math.inf,
                "cosine": 1.0,
                "max_abs_diff": 0.0,
                "finite": True,
            },
        },
        latency=LatencyStats.from_samples(samples),
        samples_s=samples,
        verdicts=verdicts or [Verdict("fidelity", "pass", "ok", {"sqnr_db": math.inf})],
    )


# ---- Pareto frontier --------------------------------------------------------------------------


def test_dominates_literal() -> None:
    """Faster and as accurate dominates; equal points do not dominate each other."""
    assert dominates((1.0, 0.9), (2.0, 0.9))
    assert dominates((1.0, 0.95), (1.0, 0.9))
    assert not dominates((1.0, 0.9), (1.0, 0.9))
    assert not dominates((1.0, 0.8), (2.0, 0.9))  # a trade-off: neither dominates


def test_pareto_front_literal() -> None:
    """The fast-but-lossy and the slow-but-exact cases are both optimal; the slow-and-lossy one is not."""
    points = [(0.2, 0.95), (1.0, 0.99), (1.5, 0.96), (0.2, 0.95), (0.5, 0.97)]
    assert pareto_front(points) == [True, True, False, True, True]
    assert pareto_front([]) == []
    assert pareto_front([(3.0, 0.5)]) == [True]


points_strategy = st.lists(
    st.tuples(st.floats(0.01, 100.0), st.floats(0.0, 1.0)).map(lambda p: (round(p[0], 2), round(p[1], 2))),
    max_size=30,
)


@given(points_strategy)
def test_pareto_front_properties(points: list[tuple[float, float]]) -> None:
    """No frontier point is dominated, and every point off the frontier is dominated by one on it."""
    front = pareto_front(points)
    on = [p for p, f in zip(points, front, strict=True) if f]
    off = [p for p, f in zip(points, front, strict=True) if not f]
    assert all(not dominates(q, p) for p in on for q in points)
    assert all(any(dominates(q, p) for q in on) for p in off)
    assert bool(points) == bool(on)


# ---- results.json -----------------------------------------------------------------------------


def _roundtrip(tmp_path: Path, cases: list[CaseResult]) -> ResultsDocument:
    write_report(tmp_path, cases, {"runner": "r1", "machine": {"cpu_model": "x"}, "drift": []})
    return load_results(tmp_path / "results.json")


def test_schema_round_trip(tmp_path: Path) -> None:
    """results -> JSON -> load gives equal cases, infinities included, and keeps the metadata."""
    cases = [
        make_case(),
        make_case(technique="int8_dynamic", p50_ms=0.4, metric=0.88),
        make_case(verdicts=[Verdict("regression", "fail", "slower", {"ratio": 1.4, "ratio_ci": [1.3, 1.5]})]),
    ]
    loaded = _roundtrip(tmp_path, cases)
    assert loaded.cases == sorted(cases, key=lambda r: r.case_id)
    assert loaded.cases[0].accuracy["fidelity"]["sqnr_db"] == math.inf  # type: ignore[index]
    assert loaded.meta["schema_version"] == RESULTS_SCHEMA_VERSION
    assert loaded.runner == "r1" and loaded.drift == [] and loaded.path == tmp_path / "results.json"


@settings(max_examples=25, deadline=None)
@given(
    samples=st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=40),
    metric=st.floats(0.0, 1.0),
    status=st.sampled_from(["passed", "failed", "error"]),
)
def test_schema_round_trip_property(samples: list[float], metric: float, status: str) -> None:
    """Any case survives a trip through the stable JSON and the loader unchanged."""
    case = make_case(metric=metric, status=status)
    case.samples_s, case.latency = samples, LatencyStats.from_samples(samples)
    text = dumps_stable(results_document([case], {"runner": "r"}))
    from perfgate.results import case_from_json

    again = case_from_json(json.loads(text)["cases"][0])
    assert dumps_stable(again.to_dict()) == dumps_stable(case.to_dict())


def test_loader_names_the_file_and_the_version(tmp_path: Path) -> None:
    """Another schema version, broken JSON, a missing file: each error names the file."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema_version": 99, "cases": []}))
    with pytest.raises(ResultsError, match=rf"{path}.*schema version 99.*reads {RESULTS_SCHEMA_VERSION}"):
        load_results(path)
    path.write_text("{not json")
    with pytest.raises(ResultsError, match=rf"{path} is not readable JSON"):
        load_results(path)
    path.write_text(json.dumps({"schema_version": RESULTS_SCHEMA_VERSION, "cases": [{"case_id": "x"}]}))
    with pytest.raises(ResultsError, match=r"case x is malformed"):
        load_results(path)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing.json")


# ---- report.md --------------------------------------------------------------------------------


def test_markdown_puts_failures_first_then_models_then_drift() -> None:
    """Regressions, then accuracy failures, lead the report; tables per model; drift at the end."""
    cases = [
        make_case(),
        make_case(
            technique="int8_dynamic",
            p50_ms=0.4,
            metric=0.5,
            status="failed",
            verdicts=[Verdict("task_metric", "fail", "top1 0.5 falls below 0.891")],
        ),
        make_case(
            model="n",
            verdicts=[Verdict("regression", "fail", "p50 1 ms -> 2 ms", {"ratio": 2.0})],
            status="failed",
        ),
    ]
    meta = {"runner": "r1", "drift": [{"what": "library torch", "baseline": "2.4", "current": "2.5"}]}
    text = "\n".join(report_markdown([ResultsDocument(meta, cases)]))
    order = [
        "## Regressions and accuracy failures",
        "| `n-fp32-torch_cpu-b1` | r1 | regression |",
        "| `m-int8_dynamic-torch_cpu-b1` | r1 | task_metric |",
        "## Baseline comparison",
        "## m",
        "## n",
        "## Environment",
        "## Environment drift",
        "| library torch | 2.4 | 2.5 |",
    ]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert "| `m-fp32-torch_cpu-b1` |" in text and "**yes**" in text


def test_merged_markdown_has_best_per_runner() -> None:
    """With two runners the report says which configuration is best on which."""
    one = ResultsDocument(
        {"runner": "cpu-1"}, [make_case(runner="cpu-1"), make_case(backend="ort", p50_ms=2.0)]
    )
    two = ResultsDocument(
        {"runner": "cpu-2"}, [make_case(runner="cpu-2", p50_ms=3.0), make_case(backend="ort")]
    )
    text = "\n".join(report_markdown([one, two]))
    assert "## Best per runner" in text
    assert "| m | `cpu-1` | intra_op_threads=1 | `fp32-torch_cpu-b1` | 1.0000 |" in text
    assert "| m | `cpu-2` | intra_op_threads=1 | `fp32-ort-b1` | 1.0000 |" in text
    assert "| `fp32-ort-b1` | 2.0000 | **1.0000** |" in text  # the pivot: p50 per runner, best in bold


# ---- plots ------------------------------------------------------------------------------------


def test_plot_labels_do_not_overlap(tmp_path: Path) -> None:
    """A crowded model still gets every label placed apart from the others."""
    pytest.importorskip("matplotlib")
    from perfgate.plot import backend_colours, draw_model

    cases = [
        make_case(
            technique=f"t{i}",
            backend=("torch_cpu", "onnxruntime_cpu")[i % 2],
            p50_ms=1 + 0.02 * i,
            metric=0.9 - 0.001 * (i % 3),
        )
        for i in range(10)
    ]
    document = ResultsDocument({"runner": "r1"}, cases)
    fig = draw_model("m", {"r1": cases}, backend_colours([document]))
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].texts]
    assert len(boxes) == len(cases)
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    assert not overlapping


def test_write_report_draws_a_plot_per_model(tmp_path: Path) -> None:
    """Every model gets its PNG and SVG, linked from its section of report.md."""
    pytest.importorskip("matplotlib")
    written = write_report(tmp_path, [make_case(), make_case(model="n", p50_ms=30.0)], {"runner": "r1"})
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["results.json", "report.md", "pareto-m.png", "pareto-m.svg", "pareto-n.png", "pareto-n.svg"]
    )
    assert "![accuracy against p50 latency, m](pareto-m.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "pareto-m.png").read_bytes().startswith(b"\x89PNG")


# ---- end to end -------------------------------------------------------------------------------


def test_perf_report_end_to_end_with_progress(perf_project: pytest.Pytester) -> None:
    """A real run writes the three files, and -v shows each case's place in the matrix."""
    pytest.importorskip("matplotlib")
    result = perf_project.runpytest("perf", "-v", "--perf-report", "out")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*perfgate: [[]1/4] tiny_mlp-*-b1: building*", "*perfgate: [[]4/4] tiny_mlp-*-b1: timing*"]
    )
    out = perf_project.path / "out"
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "pareto-tiny_mlp.png"}
    document = load_results(out / "results.json")
    assert len(document.cases) == 4 and document.runner == "test-runner"
    assert document.meta["machine"]["cpu_cores"] >= 1
    assert (out / "report.md").read_text().startswith("# perfgate report: runner `test-runner`")


def test_matrix_progress_numbers_the_selected_cases() -> None:
    """Positions follow the selection; routine steps are told apart from rare long ones."""
    from perfgate.session import MatrixProgress

    progress = MatrixProgress()
    progress.select(["a", "b", "c"])
    assert progress.line("x: building") == "x: building"  # before any case starts
    progress.enter("b")
    assert progress.line("m-fp32-torch_cpu-b1: timing") == "[2/3] m-fp32-torch_cpu-b1: timing"
    assert progress.is_step("m-fp32-torch_cpu-b1: building")
    assert not progress.is_step("training m (30 epochs, cached afterwards)")


def test_crowded_plot_falls_back_to_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When names cannot all be placed apart, points get numbers (one per configuration) and a key."""
    pytest.importorskip("matplotlib")
    from perfgate import plot

    monkeypatch.setattr(plot, "OFFSET_RADII", (5.0,))  # leave names no room: the fallback must kick in
    cases = [make_case(technique=f"technique_{i}", p50_ms=1.0) for i in range(12)]
    fig = plot.draw_model(
        "m", {"r1": cases}, plot.backend_colours([ResultsDocument({"runner": "r1"}, cases)])
    )
    texts = fig.axes[0].texts
    numbers = [t for t in texts if t.get_text().isdigit()]
    assert len(numbers) == 12
    key = next(t.get_text() for t in texts if "technique_" in t.get_text())
    assert key.splitlines()[0] == " 1  technique_0" and len(key.splitlines()) == 12
