"""Render docs/cpu-matrix.md's TVM table from saved results.json files.

One row per backend at FP32 (PyTorch eager, ONNX Runtime, OpenVINO, TVM untuned) and the tuned
TVM case, per model, with accuracy, p50, p99, throughput, the build (compile, or tuning and
compile) time and the speedup over FP32 PyTorch eager. Nothing is re-run: the figures are those
of the runs that wrote the files; a later file's case replaces an earlier file's.

    pytest perf --perf-profile tvm -m cpu --perf-report out && python benchmarks/tvm_table.py out/results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perfgate.report import markdown_table
from perfgate.results import CaseResult, load_results

ROWS = (
    ("fp32", "torch_cpu"),
    ("fp32", "onnxruntime_cpu"),
    ("fp32", "openvino_cpu"),
    ("fp32", "tvm_cpu"),
    ("tvm_tuned", "tvm_cpu"),
)
HEADERS = ("technique", "backend", "top-1", "Δ top-1", "p50 ms", "p99 ms", "samples/s", "build s", "speedup")


def _build(case: CaseResult) -> str:
    """The build time; for a tuned case, the tuning's share and budget too."""
    if case.build_s is None:
        return "-"
    settings = case.settings
    if "tuning_s" not in settings:
        return f"{case.build_s:.1f}"
    return (
        f"{case.build_s:.0f} (tuning {settings['tuning_s']:.0f}, "
        f"{settings['tuning_trials']} trials over {settings['tuning_tasks']} tasks)"
    )


def rows(cases: dict[str, CaseResult], model: str, batch: int) -> list[list[str]]:
    """One row per (technique, backend) of :data:`ROWS` that ``model`` has at ``batch``."""
    found = {
        (c.technique, c.backend): c for c in cases.values() if c.model == model and c.batch_size == batch
    }
    reference = found.get(("fp32", "torch_cpu"))
    ref_p50 = reference.latency.p50_ms if reference and reference.latency else None
    out = []
    for technique, backend in ROWS:
        case = found.get((technique, backend))
        if case is None or case.latency is None or not case.accuracy:
            continue
        lat, delta = case.latency, case.accuracy.get("metric_delta")
        out.append(
            [
                technique,
                backend,
                f"{case.accuracy['metric']:.4f}",
                f"{delta:+.4f}" if delta is not None else "-",
                f"{lat.p50_ms:.3f}",
                f"{lat.p99_ms:.3f}" + ("~" if "p99" in lat.low_confidence else ""),
                f"{lat.throughput_per_s:.0f}",
                _build(case),
                f"{ref_p50 / lat.p50_ms:.2f}x" if ref_p50 else "-",
            ]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="results.json files written by --perf-report")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the table (default: 1)")
    args = parser.parse_args(argv)
    cases = {case.case_id: case for path in args.results for case in load_results(path).cases}
    for model in sorted({c.model for c in cases.values()}):
        table = rows(cases, model, args.batch)
        if table:
            lines = [f"### {model} (batch {args.batch})", "", *markdown_table(HEADERS, table), ""]
            sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
