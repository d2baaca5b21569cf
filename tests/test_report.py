"""Reports: the Pareto frontier, the results.json schema, report.md and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfgate import report
from perfgate.backends import BACKENDS
from perfgate.gates import Verdict
from perfgate.jsonio import dumps_stable
from perfgate.pareto import dominates, model_score, pareto_front
from perfgate.report import (
    best_per_runner_rows,
    comparison_rows,
    failure_rows,
    incomparable_rows,
    model_rows,
    regression_lines,
    report_markdown,
    results_document,
    terminal_lines,
    verdict_word,
    write_report,
)
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
    metric_name: str = "top1",
    reference: float = 0.9,
    direction: str | None = None,
) -> CaseResult:
    """A case as the plugin records it, with samples spread around ``p50_ms``.

    :param direction: the accuracy's ``metric_direction``; ``None`` leaves it out, as older results do.
    """
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
            "metric_name": metric_name,
            "metric": metric,
            "reference_metric": reference,
            "metric_delta": metric - reference,
            **({"metric_direction": direction} if direction else {}),
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


def test_dominates_and_front_lower_is_better_literal() -> None:
    """With a lower-is-better score (MSE) the smaller score wins: as fast and lower MSE dominates."""
    assert dominates((1.0, 0.01), (1.0, 0.05), higher_is_better=False)
    assert not dominates((1.0, 0.05), (1.0, 0.01), higher_is_better=False)
    assert dominates((1.0, 0.01), (2.0, 0.01), higher_is_better=False)
    assert not dominates((0.5, 0.03), (1.0, 0.01), higher_is_better=False)  # a trade-off
    # fp32 slow and best; int8 fast, a little worse; a slower int8 with far worse MSE is dominated.
    points = [(1.0, 0.010), (0.5, 0.030), (0.6, 0.080), (1.2, 0.010)]
    assert pareto_front(points, higher_is_better=False) == [True, True, False, False]
    assert pareto_front(points) == [False, True, True, False]  # read as higher-is-better: the other way


@given(points_strategy, st.booleans())
def test_pareto_front_properties(points: list[tuple[float, float]], higher: bool) -> None:
    """In either direction: no frontier point is dominated, every point off the frontier is dominated
    by one on it, and a lower-is-better front is the higher-is-better front of the negated scores."""
    front = pareto_front(points, higher_is_better=higher)
    on = [p for p, f in zip(points, front, strict=True) if f]
    off = [p for p, f in zip(points, front, strict=True) if not f]
    assert all(not dominates(q, p, higher) for p in on for q in points)
    assert all(any(dominates(q, p, higher) for q in on) for p in off)
    assert bool(points) == bool(on)
    if not higher:
        assert front == pareto_front([(x, -y) for x, y in points])


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


# ---- metric direction -------------------------------------------------------------------------


def mse_cases() -> list[CaseResult]:
    """A regression model scored by MSE (lower is better): fp32 slow and best, int8_dynamic fast and
    a little worse, int8_static slower than int8_dynamic and far worse (dominated)."""
    mse = {"metric_name": "mse", "reference": 0.010, "direction": "lower"}
    return [
        make_case(model="reg", p50_ms=1.0, metric=0.010, **mse),  # type: ignore[arg-type]
        make_case(model="reg", technique="int8_dynamic", p50_ms=0.5, metric=0.030, **mse),  # type: ignore[arg-type]
        make_case(model="reg", technique="int8_static", p50_ms=0.6, metric=0.080, **mse),  # type: ignore[arg-type]
    ]


def test_lower_is_better_metric_sets_the_frontier_and_the_best() -> None:
    """With MSE the worse-MSE variant is off the frontier and the best-MSE one on it, the "most
    accurate" case is the lowest MSE, and the table names the metric and its direction."""
    rows = {row["case"]: row for row in model_rows(mse_cases())["reg"]}
    assert rows["reg-fp32-torch_cpu-b1"]["pareto"] is True
    assert rows["reg-int8_dynamic-torch_cpu-b1"]["pareto"] is True
    assert rows["reg-int8_static-torch_cpu-b1"]["pareto"] is False
    assert rows["reg-int8_static-torch_cpu-b1"]["accuracy_delta"] == pytest.approx(
        0.070
    )  # metric - reference
    (best,) = best_per_runner_rows([ResultsDocument({"runner": "r1"}, mse_cases())])
    assert best[5] == "`fp32-torch_cpu-b1` (mse 0.0100)"
    assert best[6] == "`fp32-torch_cpu-b1`, `int8_dynamic-torch_cpu-b1`"
    lines = terminal_lines(mse_cases())
    assert lines[1] == "model reg  metric: mse (lower is better)"
    assert lines[2].split() == ["case", "p50", "ms", "p99", "ms", "thr/s", "mse", "Δmse", "size", "speedup", "pareto", "verdict"]  # fmt: skip
    static = next(line for line in lines if line.startswith("reg-int8_static"))
    assert "0.0800  +0.0700" in static and not static.rstrip().endswith("*  ok")
    text = "\n".join(report_markdown([ResultsDocument({"runner": "r1"}, mse_cases())]))
    assert "metric: `mse` (lower is better)" in text and "| mse | Δmse |" in text


def test_missing_direction_reads_as_higher_and_mixed_metrics_fall_back_to_agreement() -> None:
    """Old results (no metric_direction) are higher-is-better; a model whose cases disagree on the
    metric is scored on top-1 agreement for every case rather than on two scales at once."""
    assert model_score([make_case()]).higher_is_better
    assert model_score(mse_cases()).describe() == "mse (lower is better)"
    mixed = model_score([make_case(model="reg"), *mse_cases()])
    assert (mixed.name, mixed.task_metric, mixed.higher_is_better) == ("top-1 agreement", False, True)


def test_small_scores_keep_their_digits() -> None:
    """An MSE below 0.001 is written in scientific notation instead of rounding to 0.0000."""
    case = make_case(model="tiny", metric=2e-5, metric_name="mse", reference=1e-5, direction="lower")
    row = next(line for line in terminal_lines([case]) if line.startswith("tiny-"))
    assert "2.000e-05  +1.000e-05" in row


# ---- verdicts: incomparable baselines, baseline accuracy, technique effect --------------------

INCOMPARABLE = Verdict(
    "regression",
    "incomparable",
    "baseline taken on other hardware: not compared",
    {"reasons": ["cpu_model Intel Xeon 8375C -> AMD EPYC 7763", "torch 2.4.1 -> 3.0.0"]},
)


def compared_cases() -> list[CaseResult]:
    """One case per regression status: pass, fail, improved, incomparable, new."""
    regression = {
        "baseline_p50_ms": 1.0,
        "baseline_sessions_ms": [0.99, 1.0, 1.01],
        "current_p50_ms": 1.0,
        "ratio": 1.0,
        "upper_limit_ms": 1.06,
    }

    def judged(technique: str, status: str, ratio: float = 1.0) -> CaseResult:
        verdict = Verdict("regression", status, status, {**regression, "ratio": ratio})
        return make_case(
            technique=technique, verdicts=[verdict], status="failed" if status == "fail" else "passed"
        )

    return [
        judged("a_pass", "pass"),
        judged("b_fail", "fail", 1.5),
        judged("c_improved", "improved", 0.7),
        make_case(technique="d_moved", verdicts=[INCOMPARABLE]),
        make_case(technique="e_new", verdicts=[Verdict("regression", "new", "no baseline")]),
    ]


def test_incomparable_is_listed_apart_with_its_reasons() -> None:
    """An incomparable baseline sorts after regressions and improvements, its reasons are listed
    under the table, and it is neither a failure row nor a row of the comparison table."""
    cases = compared_cases()
    lines = regression_lines(cases)
    rows = [line.split()[0] for line in lines[3:8]]
    assert rows == [
        "m-b_fail-torch_cpu-b1",
        "m-c_improved-torch_cpu-b1",
        "m-d_moved-torch_cpu-b1",
        "m-e_new-torch_cpu-b1",
        "m-a_pass-torch_cpu-b1",
    ]
    assert lines[5].endswith("incomparable")
    assert (
        "incomparable: m-d_moved-torch_cpu-b1: cpu_model Intel Xeon 8375C -> AMD EPYC 7763; torch 2.4.1 -> 3.0.0"
        in lines
    )
    assert verdict_word(cases[3]) == "incomparable"
    document = ResultsDocument({"runner": "r1"}, cases)
    assert [row[0] for row in failure_rows([document])] == ["`m-b_fail-torch_cpu-b1`"]
    assert "`m-d_moved-torch_cpu-b1`" not in {row[0] for row in comparison_rows(cases)}
    assert incomparable_rows(cases) == [
        [
            "`m-d_moved-torch_cpu-b1`",
            "cpu_model Intel Xeon 8375C -> AMD EPYC 7763; torch 2.4.1 -> 3.0.0",
            "not judged",
        ]
    ]
    text = "\n".join(report_markdown([document]))
    assert text.splitlines()[2].startswith(
        "5 cases: 4 passed, 1 failed, 0 errors; 1 incomparable with their baseline"
    )
    assert text.index("| `m-a_pass-torch_cpu-b1` |") < text.index("1 incomparable: the baseline was taken")


def test_failure_rows_show_baseline_accuracy_and_technique_effect_in_order() -> None:
    """Failed baseline_accuracy and technique_effect verdicts are failure rows with their messages,
    ranked: regressions, accuracy (baseline_accuracy with the task metric), techniques that did
    nothing, baselines failed as incomparable under --perf-require-baseline, then errors."""
    cases = [
        make_case(technique="a", status="error", verdicts=[]),
        make_case(
            technique="b",
            status="failed",
            verdicts=[Verdict("technique_effect", "fail", "0 of 6 ops quantized", {"quantized_ops": 0})],
        ),
        make_case(
            technique="c",
            status="failed",
            verdicts=[Verdict("regression", "fail", "incomparable baseline (--perf-require-baseline)")],
        ),
        make_case(
            technique="d",
            status="failed",
            verdicts=[
                Verdict("baseline_accuracy", "fail", "top1 0.85 vs the baseline's 0.90: worse by > 0.01")
            ],
        ),
        make_case(
            technique="e", status="failed", verdicts=[Verdict("regression", "fail", "p50 1 ms -> 2 ms")]
        ),
        make_case(technique="f", verdicts=[Verdict("technique_effect", "allowed", "artifact not smaller")]),
    ]
    rows = failure_rows([ResultsDocument({"runner": "r1"}, cases)])
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("`m-e-torch_cpu-b1`", "regression", "p50 1 ms -> 2 ms"),
        ("`m-d-torch_cpu-b1`", "baseline_accuracy", "top1 0.85 vs the baseline's 0.90: worse by > 0.01"),
        ("`m-b-torch_cpu-b1`", "technique_effect", "0 of 6 ops quantized"),
        (
            "`m-c-torch_cpu-b1`",
            "regression (incomparable)",
            "incomparable baseline (--perf-require-baseline)",
        ),
        ("`m-a-torch_cpu-b1`", "error", "the case did not run to its end"),
    ]
    assert verdict_word(cases[2]) == "FAIL incomparable"


def test_technique_without_effect_is_flagged_in_the_tables() -> None:
    """A technique_effect verdict of fail or allowed marks the case's size with "!" and lists the
    problems under its model's table; a passing one is not marked."""
    problems = {
        "quantized_ops": 0,
        "float_ops": 6,
        "problems": ["0 of 6 ops quantized", "artifact not smaller"],
    }
    cases = [
        make_case(),
        make_case(technique="int8_dynamic", p50_ms=0.9, verdicts=[Verdict("technique_effect", "pass", "ok")]),
        make_case(
            technique="int8_static",
            p50_ms=0.8,
            status="failed",
            verdicts=[Verdict("technique_effect", "fail", "no effect", problems)],
        ),
        make_case(
            technique="prune", p50_ms=0.95, verdicts=[Verdict("technique_effect", "allowed", "no effect")]
        ),
    ]
    lines = terminal_lines(cases)
    row = {line.split()[0]: line for line in lines if line.startswith("m-")}
    assert "29.3 KB !" in row["m-int8_static-torch_cpu-b1"] and "97.7 KB !" in row["m-prune-torch_cpu-b1"]
    assert "!" not in row["m-int8_dynamic-torch_cpu-b1"] and "!" not in row["m-fp32-torch_cpu-b1"]
    note = lines.index(
        "! the technique changed nothing or the artifact is not smaller than FP32: see the verdict"
    )
    assert lines[note + 1 : note + 3] == [
        "  m-int8_static-torch_cpu-b1: fail: 0 of 6 ops quantized; artifact not smaller",
        "  m-prune-torch_cpu-b1: allowed: no effect",
    ]
    text = "\n".join(report_markdown([ResultsDocument({"runner": "r1"}, cases)]))
    assert "| 29.3 KB ! |" in text
    assert "- `m-int8_static-torch_cpu-b1`: fail: 0 of 6 ops quantized; artifact not smaller" in text


def model_table(lines: list[str]) -> dict[str, dict[str, str]]:
    """The first model table of a report.md, case -> its cells keyed by header."""
    start = next(i for i, line in enumerate(lines) if line.startswith("| case |") and "pareto" in line)
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]  # noqa: E731
    headers = split(lines[start])
    rows = [
        dict(zip(headers, split(line), strict=True)) for line in lines[start + 2 :] if line.startswith("| `")
    ]
    return {row["case"].strip("`"): row for row in rows}


def test_model_tables_are_keyed_by_column_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A column added to COLUMNS gets its own cell and the frontier mark stays under "pareto"
    (report.md bolded cell[8], whichever column sat there)."""
    cells = report._cells
    monkeypatch.setattr(report, "COLUMNS", (*report.COLUMNS[:8], "threads", *report.COLUMNS[8:]))
    monkeypatch.setattr(report, "_cells", lambda row: {**cells(row), "threads": "1"})
    cases = [make_case(), make_case(technique="int8_dynamic", p50_ms=0.5, metric=0.85), make_case(technique="slow", p50_ms=2.0, metric=0.8)]  # fmt: skip
    table = model_table(report_markdown([ResultsDocument({"runner": "r1"}, cases)]))
    fast = table["m-int8_dynamic-torch_cpu-b1"]
    assert (fast["pareto"], fast["threads"], fast["speedup"], fast["verdict"]) == (
        "**yes**",
        "1",
        "2.00x",
        "ok",
    )
    assert table["m-slow-torch_cpu-b1"]["pareto"] == ""


def test_the_speedup_reference_comes_from_the_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speedup is over the technique and the backend registered as the reference (fp32 on
    torch_cpu; a classical model's on its estimator), not over names written into the report."""
    assert report.reference() == ("fp32", ("torch_cpu", "sklearn", "onnxruntime_cpu"))
    monkeypatch.setattr(BACKENDS, "reference", "onnxruntime_cpu")
    cases = [make_case(), make_case(backend="onnxruntime_cpu", p50_ms=2.0)]
    rows = {row["case"]: row["speedup"] for row in model_rows(cases)["m"]}
    assert rows == {"m-fp32-torch_cpu-b1": 2.0, "m-fp32-onnxruntime_cpu-b1": 1.0}
    assert "speedup is over fp32 on onnxruntime_cpu" in "\n".join(
        report_markdown([ResultsDocument({}, cases)])
    )


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


def test_a_log_latency_axis_labels_plain_numbers_apart() -> None:
    """Latencies spanning 10x get a log axis whose tick labels are plain numbers (0.02, 0.05, 0.1),
    never overlapping: matplotlib's default put "2x10^-2 3x10^-2 4x10^-2" into each other."""
    pytest.importorskip("matplotlib")
    from perfgate.plot import backend_colours, draw_model

    cases = [
        make_case(technique=f"t{i}", p50_ms=p50, metric=0.9) for i, p50 in enumerate((0.02, 0.03, 0.07, 0.2))
    ]
    fig = draw_model("m", {"r1": cases}, backend_colours([ResultsDocument({"runner": "r1"}, cases)]))
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    renderer = fig.canvas.get_renderer()
    labels = [
        t
        for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
        if t.get_text() and t.get_visible()
    ]
    lo, hi = ax.get_xlim()
    shown = [t for t in labels if lo <= t.get_position()[0] <= hi]
    assert {t.get_text() for t in shown} >= {"0.02", "0.05", "0.1"}
    for t in shown:
        float(t.get_text())  # a plain number, no scientific notation
    boxes = [t.get_window_extent(renderer) for t in shown]
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]


def test_plot_names_the_metric_and_its_direction() -> None:
    """The score axis names the metric and says which way is better (the top1 fraction wording only
    for top1), and the title names the metric."""
    pytest.importorskip("matplotlib")
    from perfgate.plot import axis_label, plot_title

    mse = model_score(mse_cases())
    assert axis_label(mse) == "mse  ←  lower is better"  # drawn reading upwards: the arrow points down
    assert "fraction" not in axis_label(mse)
    assert (
        axis_label(model_score([make_case()]))
        == "top1 accuracy (fraction of the eval set)  →  higher is better"
    )
    assert plot_title("reg", mse, ["r1"]) == "reg: mse vs p50 latency  —  runner r1"


def test_lower_is_better_frontier_hangs_from_the_top() -> None:
    """For MSE the frontier starts at the top of the axis at the fastest frontier case and steps down
    to the lower (better) MSE of slower cases; the dominated case is not starred."""
    pytest.importorskip("matplotlib")
    from perfgate.plot import backend_colours, draw_model

    cases = mse_cases()
    fig = draw_model("reg", {"r1": cases}, backend_colours([ResultsDocument({"runner": "r1"}, cases)]))
    ax = fig.axes[0]
    (line,) = [line for line in ax.lines if line.get_label() == "Pareto frontier"]
    assert list(line.get_xdata()[:3]) == [0.5, 0.5, 1.0]
    assert line.get_ydata()[0] == ax.get_ylim()[1]
    assert list(line.get_ydata()[1:]) == pytest.approx([0.030, 0.010, 0.010])
    assert ax.get_ylabel() == "mse  ←  lower is better"


def test_write_report_draws_a_plot_per_model(tmp_path: Path) -> None:
    """Every model gets its PNG and SVG, linked from its section of report.md."""
    pytest.importorskip("matplotlib")
    written = write_report(tmp_path, [make_case(), make_case(model="n", p50_ms=30.0)], {"runner": "r1"})
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["results.json", "report.md", "pareto-m.png", "pareto-m.svg", "pareto-n.png", "pareto-n.svg"]
    )
    assert "![top1 against p50 latency, m](pareto-m.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "pareto-m.png").read_bytes().startswith(b"\x89PNG")


# ---- end to end -------------------------------------------------------------------------------
# test_plugin_e2e.py runs the whole tiny matrix once with -v and --perf-report and checks the
# three files and the progress lines there: one run for every check, each run costs seconds.


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
