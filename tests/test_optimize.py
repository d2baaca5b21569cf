"""``perfgate optimize``: one model to a report, a Pareto chart per batch size and a matrix file."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from perfgate import cli
from perfgate.gates import Verdict
from perfgate.matrix import ALL_PROFILES, load_matrix
from perfgate.optimize import (
    Request,
    best_configurations,
    best_lines,
    choose_techniques,
    make_plan,
    matrix_text,
    optimize,
)
from perfgate.results import CaseResult, ResultsDocument
from perfgate.stats import LatencyStats
from tests.conftest import TESTS

TINY = f"{TESTS.as_posix()}/tiny_models.py"


@pytest.fixture
def user_folder(tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder outside the repository, as a user's, with the tests' shared artifact cache."""
    monkeypatch.setenv("PERFGATE_CACHE", str(shared_cache))
    monkeypatch.delenv("PERFGATE_RUNNER", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- real runs ------------------------------------------------------------------------------


def test_optimize_writes_the_matrix_report_and_chart_and_names_the_best(user_folder: Path) -> None:
    """In process: the plan (the reference backend added), a matrix file that loads and generates
    exactly the cases that ran, results.json, report.md, one chart with a panel per batch size, and
    the best configuration of each batch size."""
    out = io.StringIO()
    request = Request(
        target=f"{TINY}:tiny_mlp",
        model_file=None,
        data=f"{TINY}:blobs",
        output=user_folder / "out",
        techniques=["fp32", "int8_dynamic"],
        backends=["onnxruntime_cpu"],
        batch_sizes=[1, 8],
    )
    assert optimize(request, stream=out) == 0
    printed = out.getvalue()
    assert "techniques (2): fp32, int8_dynamic" in printed
    assert "backends (2): torch_cpu, onnxruntime_cpu" in printed  # the reference is always there
    assert "8 cases" in printed
    assert "  batch 1:" in printed and "  batch 8:" in printed
    assert "    fastest within 1%:" in printed
    folder = user_folder / "out"
    assert {p.name for p in folder.iterdir()} >= {
        "matrix.toml",
        "results.json",
        "report.md",
        "pareto-tiny_mlp.png",
        "pareto-tiny_mlp.svg",
    }
    ran = {c["case_id"] for c in json.loads((folder / "results.json").read_text())["cases"]}
    generated = {c.id for c in load_matrix(folder / "matrix.toml", ALL_PROFILES).cases}
    assert generated == ran and len(ran) == 8
    assert "![top1 against p50 latency, tiny_mlp](pareto-tiny_mlp.png)" in (folder / "report.md").read_text()


def test_the_cli_runs_in_a_fresh_process(user_folder: Path) -> None:
    """``perfgate optimize`` as a user types it: a progress bar on stderr, the summary on stdout,
    exit 0 when every case passed."""
    command = [
        str(Path(sys.executable).with_name("perfgate")),
        "optimize",
        f"{TINY}:tiny_mlp",
        "--data",
        f"{TINY}:blobs",
        "--metric",
        "top1",
        "--techniques",
        "fp32",
        "--backends",
        "torch_cpu",
        "--batch-sizes",
        "1",
        "-o",
        "cli-out",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=user_folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1/1 tiny_mlp-fp32-torch_cpu-b1: passed" in done.stderr
    assert "fastest overall:       fp32 on torch_cpu, 1.00x" in done.stdout
    assert "Traceback" not in done.stderr
    matrix = (user_folder / "cli-out" / "matrix.toml").read_text()
    assert matrix.startswith("# Written by: perfgate optimize ")
    assert [c.id for c in load_matrix(user_folder / "cli-out" / "matrix.toml").cases] == [
        "tiny_mlp-fp32-torch_cpu-b1"
    ]


# ---- bad input: one line, exit 2, no traceback ----------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["tiny_mlp", "--data", f"{TINY}:blobs"], "TARGET 'tiny_mlp': expected MODULE:FUNCTION"),
        ([f"{TINY}:no_such_factory", "--data", f"{TINY}:blobs"], "has no attribute 'no_such_factory'"),
        (["nowhere/models.py:build", "--data", f"{TINY}:blobs"], "no such file"),
        ([f"{TINY}:tiny_mlp", "--data", f"{TINY}:blobs", "--backends", "torch_cpu,warp_drive"],
         "--backends: unknown backend warp_drive; registered: torch_cpu"),
        ([f"{TINY}:tiny_mlp", "--data", f"{TINY}:blobs", "--techniques", "int9"], "unknown technique int9"),
        ([f"{TINY}:tiny_mlp", "--data", f"{TINY}:no_data"], "--data tiny_models:no_data: ValueError"),
        ([f"{TINY}:tiny_mlp", "--data", f"{TINY}:tiny_mlp"], "--data: calling it fails with TypeError"),
        ([f"{TINY}:tiny_mlp", "--data", f"{TINY}:blobs", "--batch-sizes", "1,0"], "--batch-sizes '1,0'"),
        (["--model", "model.txt", "--data", f"{TINY}:blobs"], "expected an .onnx file, or a .pt/.pth file"),
        (["--data", f"{TINY}:blobs"], "give the model either as TARGET"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_without_traceback(
    user_folder: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    (user_folder / "model.txt").write_bytes(b"not really")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["optimize", *arguments, "-o", "out"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("perfgate: error: ") and message in error, error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not (user_folder / "out" / "results.json").exists()


# ---- the plan ------------------------------------------------------------------------------


def test_techniques_perfgate_cannot_fill_or_that_cost_too_much_are_left_out_with_the_reason() -> None:
    """distill needs a student (a model of the user's own), tvm_tuned is opt-in, a torch-level
    technique applies to no classical model, and channels_last exists on no ONNX backend."""
    chosen, left = choose_techniques("torch", ["torch_cpu", "onnxruntime_cpu"], None)
    reasons = {item.name: item.reason for item in left}
    assert "distill" not in chosen and "options.student" in reasons["distill"]
    assert "tvm_tuned" not in chosen and "--techniques" in reasons["tvm_tuned"]
    assert {"fp32", "int8_dynamic", "int8_static", "channels_last", "threads_tuned"} <= set(chosen)
    chosen, left = choose_techniques("classical", ["sklearn", "onnxruntime_cpu"], None)
    reasons = {item.name: item.reason for item in left}
    assert reasons["int8_static"] == "applies to no classical model"
    assert "fp32" in chosen and "int8_dynamic" in chosen
    chosen, left = choose_techniques("torch", ["onnxruntime_cpu"], ["fp32", "channels_last"])
    assert chosen == ["fp32"]
    assert (
        "channels_last means nothing to onnxruntime_cpu" in {i.name: i.reason for i in left}["channels_last"]
    )


def test_a_pt_file_is_loaded_by_the_generated_factory(user_folder: Path) -> None:
    """``--model file.pt``: the matrix names perfgate's loader with the file's absolute path (a
    matrix that loads), its kind found by loading it; the loader gives the whole module
    (torch.load with weights_only=False); a state_dict is refused with the fix."""
    import torch

    from perfgate.optimize import load_pt

    sys.path.insert(0, str(TESTS))
    try:
        from tiny_models import TinyMLP
    finally:
        sys.path.remove(str(TESTS))
    torch.save(TinyMLP(), user_folder / "mlp.pt")
    torch.save(TinyMLP().state_dict(), user_folder / "weights.pt")

    class Ctx:
        options = {"path": str(user_folder / "mlp.pt")}

    assert isinstance(load_pt(Ctx()), TinyMLP)
    request = Request(  # no kind given: found by loading the file
        target=None,
        model_file=Path("mlp.pt"),
        data=f"{TINY}:blobs",
        output=user_folder / "out",
        techniques=["fp32"],
        backends=["torch_cpu"],
        batch_sizes=[1],
        pythonpath=[TESTS],
    )
    plan = make_plan(request, user_folder)
    assert (plan.model, plan.kind, plan.factory) == ("mlp", "torch", "perfgate.optimize:load_pt")
    assert plan.options == {"path": str(user_folder / "mlp.pt")}
    (user_folder / "matrix.toml").write_text(
        matrix_text(plan, user_folder, "perfgate optimize --model mlp.pt")
    )
    matrix = load_matrix(user_folder / "matrix.toml")
    assert [c.id for c in matrix.cases] == ["mlp-fp32-torch_cpu-b1"]
    assert matrix.models["mlp"].options == {"path": str(user_folder / "mlp.pt")}
    Ctx.options = {"path": str(user_folder / "weights.pt")}
    with pytest.raises(TypeError, match=r"not a torch\.nn\.Module: save the whole module"):
        load_pt(Ctx())


# ---- the best configuration per constraint --------------------------------------------------


def case(
    technique: str,
    backend: str,
    p50_ms: float,
    metric: float,
    *,
    batch: int = 1,
    size: int = 100_000,
    failed: bool = False,
    reference: float = 0.90,
    metric_name: str = "top1",
    direction: str = "higher",
) -> CaseResult:
    """A finished case: ``failed`` gives it a failed accuracy verdict, as the gate records one."""
    samples = [p50_ms * 1e-3] * 20
    verdict = Verdict("accuracy", "fail" if failed else "pass", "metric" if failed else "ok")
    return CaseResult(
        case_id=f"m-{technique}-{backend}-b{batch}",
        model="m",
        technique=technique,
        backend=backend,
        batch_size=batch,
        device="cpu",
        runner="r1",
        status="failed" if failed else "passed",
        artifact_bytes=size,
        accuracy={
            "metric_name": metric_name,
            "metric": metric,
            "reference_metric": reference,
            "metric_delta": metric - reference,
            "metric_direction": direction,
            "fidelity": {"top1_agreement": 1.0, "sqnr_db": math.inf, "cosine": 1.0, "max_abs_diff": 0.0},
        },
        latency=LatencyStats.from_samples(samples),
        samples_s=samples,
        verdicts=[verdict],
    )


def picks(cases: list[CaseResult]) -> dict[tuple[int, str], tuple[str | None, float | None]]:
    """(batch size, constraint) -> the case picked and its speedup, rounded to 6 digits."""
    return {
        (b.batch_size, b.constraint): (b.case.case_id if b.case else None, b.speedup and round(b.speedup, 6))
        for b in best_configurations(cases, "torch_cpu")
    }


def test_best_per_constraint_literal() -> None:
    """Per batch size: the fastest case at all (its gate aside), the fastest within 0.1% and 1% of
    fp32's metric (never one that failed a gate), the smallest within 1%; speedups over fp32 on
    torch_cpu at the same batch size."""
    cases = [
        case("fp32", "torch_cpu", 1.0, 0.90),
        case("int8_static", "onnxruntime_cpu", 0.25, 0.899, failed=True, size=30_000),  # fast, gate failed
        case("fp16", "onnxruntime_cpu", 0.5, 0.895, size=50_000),  # -0.56%: within 1%, not 0.1%
        case("fp32", "onnxruntime_cpu", 0.8, 0.90),
        case("fp32", "torch_cpu", 4.0, 0.90, batch=32),
        case("int8_dynamic", "onnxruntime_cpu", 1.0, 0.80, batch=32, size=20_000),  # -11%
        case("fp32", "onnxruntime_cpu", 2.0, 0.9005, batch=32),  # a gain is within
    ]
    assert picks(cases) == {
        (1, "fastest overall"): ("m-int8_static-onnxruntime_cpu-b1", 4.0),
        (1, "fastest within 0.1%"): ("m-fp32-onnxruntime_cpu-b1", 1.25),
        (1, "fastest within 1%"): ("m-fp16-onnxruntime_cpu-b1", 2.0),
        (1, "smallest within 1%"): ("m-fp16-onnxruntime_cpu-b1", 2.0),
        (32, "fastest overall"): ("m-int8_dynamic-onnxruntime_cpu-b32", 4.0),
        (32, "fastest within 0.1%"): ("m-fp32-onnxruntime_cpu-b32", 2.0),
        (32, "fastest within 1%"): ("m-fp32-onnxruntime_cpu-b32", 2.0),
        (32, "smallest within 1%"): ("m-fp32-onnxruntime_cpu-b32", 2.0),
    }
    lines = best_lines(cases, "torch_cpu")
    assert "    fastest overall:       int8_static on onnxruntime_cpu, 4.00x  (p50 0.250 ms, 29.3 KB, " \
           "top1 0.8990 (-0.11%), FAILED a gate)" in lines  # fmt: skip


def test_best_respects_a_lower_is_better_metric() -> None:
    """For MSE a smaller value is better: +0.5% MSE is within 1% and not within 0.1%; a lower MSE is
    within any constraint; a higher one beyond 1% is not."""
    common: dict[str, Any] = {"reference": 0.010, "metric_name": "mse", "direction": "lower"}
    cases = [
        case("fp32", "torch_cpu", 1.0, 0.010, **common),
        case("fp16", "onnxruntime_cpu", 0.2, 0.0102, **common),  # +2%: beyond 1%
        case("int8_dynamic", "onnxruntime_cpu", 0.4, 0.01005, **common),  # +0.5%
        case("fp32", "onnxruntime_cpu", 0.5, 0.0099, **common),  # better than the reference
    ]
    found = picks(cases)
    assert found[(1, "fastest within 1%")] == ("m-int8_dynamic-onnxruntime_cpu-b1", 2.5)
    assert found[(1, "fastest within 0.1%")] == ("m-fp32-onnxruntime_cpu-b1", 2.0)
    assert found[(1, "fastest overall")] == ("m-fp16-onnxruntime_cpu-b1", 5.0)


# ---- plots: a panel per batch size, labels apart --------------------------------------------


def crowded_cases() -> list[CaseResult]:
    """24 cases of one model at batch 1 and batch 32, tied on the metric: in each batch size, eleven
    within 1% of each other's latency and one three times slower, so the eleven crowd together."""
    backends = ("torch_cpu", "onnxruntime_cpu", "openvino_cpu", "litert_cpu")
    techniques = ("fp32", "int8_dynamic", "int8_static_percentile")
    cases = []
    for batch, scale in ((1, 1.0), (32, 9.0)):
        for i, (technique, backend) in enumerate((t, b) for t in techniques for b in backends):
            p50 = scale * (3.0 if i == 11 else 1 + 0.001 * i)
            cases.append(case(technique, backend, p50, 0.90, batch=batch, size=10_000 * (1 + i)))
    return cases


def test_plot_has_a_panel_per_batch_size_and_labels_apart() -> None:
    """Batch 1 and batch 32 never share a latency axis: each has its panel with only its points;
    labels (names, or numbers and a key when crowded) never overlap; the y axis names the metric
    and its direction."""
    pytest.importorskip("matplotlib")
    from matplotlib.text import Annotation, Text

    from perfgate.plot import backend_colours, draw_model

    cases = crowded_cases()
    fig = draw_model("m", {"r1": cases}, backend_colours([ResultsDocument({"runner": "r1"}, cases)]))
    assert fig is not None
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["batch 1", "batch 32"]
    renderer = fig.canvas.get_renderer()
    for ax, batch in zip(axes, (1, 32), strict=True):
        expected = sorted(r.latency.p50_ms for r in cases if r.batch_size == batch and r.latency)
        shown = sorted(
            x for coll in ax.collections for x, _ in coll.get_offsets() if coll.get_sizes()[0] > 20
        )
        assert shown == pytest.approx(expected)
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        assert len(labels) == 12
        boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its leader line
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if a.overlaps(b)]
    assert axes[0].get_ylabel() == "top1 accuracy (fraction of the eval set)  →  higher is better"


def test_energy_plot_only_where_energy_was_measured(tmp_path: Path) -> None:
    """A model whose cases measured their energy gets a second figure (metric against mJ per
    inference); one without, or with energy unavailable, gets none."""
    pytest.importorskip("matplotlib")
    from perfgate.plot import write_pareto_plots

    measured = [case("fp32", "torch_cpu", 1.0, 0.9), case("fp16", "onnxruntime_cpu", 0.5, 0.9)]
    for result, joules in zip(measured, (2e-3, 1e-3), strict=True):
        result.__dict__["energy"] = {
            "source": "rapl",
            "measured": True,
            "joules_per_inference": joules,
        }  # CaseResult may not declare it yet
    unmeasured = [case("fp32", "torch_cpu", 1.0, 0.9)]
    unmeasured[0].case_id = "n-fp32-torch_cpu-b1"
    unmeasured[0].model = "n"
    unmeasured[0].__dict__["energy"] = {
        "source": "unavailable",
        "measured": False,
        "joules_per_inference": None,
    }
    written = write_pareto_plots(tmp_path, [ResultsDocument({"runner": "r1"}, [*measured, *unmeasured])])
    assert [p.name for p in written["m"]] == [
        "pareto-m.png",
        "pareto-m.svg",
        "pareto-m-energy.png",
        "pareto-m-energy.svg",
    ]
    assert [p.name for p in written["n"]] == ["pareto-n.png", "pareto-n.svg"]
    assert "energy per inference (mJ)" in (tmp_path / "pareto-m-energy.svg").read_text()


def test_an_onnx_file_is_optimized_against_onnx_runtime_on_it(user_folder: Path) -> None:
    """``--model file.onnx``: a kind = "onnx" model whose reference is ONNX Runtime on the file (not
    torch); its own names and fixed batch are renamed and freed, so batch 8 runs too."""
    import torch

    sys.path.insert(0, str(TESTS))
    try:
        from tiny_models import TinyMLP
    finally:
        sys.path.remove(str(TESTS))
    example = torch.zeros(1, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own deprecation notice
        torch.onnx.export(
            TinyMLP().eval(), (example,), str(user_folder / "mlp.onnx"), dynamo=False,
            input_names=["features"], output_names=["logits"],
        )  # fmt: skip
    out = io.StringIO()
    request = Request(
        target=None,
        model_file=Path("mlp.onnx"),
        data=f"{TINY}:blobs",
        output=user_folder / "out",
        techniques=["fp32", "threads_tuned"],
        backends=["onnxruntime_cpu"],
        batch_sizes=[1, 8],
        pythonpath=[TESTS],
    )
    assert optimize(request, stream=out) == 0
    printed = out.getvalue()
    assert "perfgate optimize: model mlp (onnx, factory perfgate.optimize:load_onnx)" in printed
    assert "backends (1): onnxruntime_cpu" in printed  # the reference of an ONNX file
    cases = json.loads((user_folder / "out" / "results.json").read_text())["cases"]
    assert sorted(c["case_id"] for c in cases) == [
        "mlp-fp32-onnxruntime_cpu-b1", "mlp-fp32-onnxruntime_cpu-b8",
        "mlp-threads_tuned-onnxruntime_cpu-b1", "mlp-threads_tuned-onnxruntime_cpu-b8",
    ]  # fmt: skip
    assert {c["model_kind"] for c in cases} == {"onnx"}
