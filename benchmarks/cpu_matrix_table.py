"""Render the CPU matrix's headline table (docs/cpu-matrix.md) from a saved results.json.

The columns follow the field's usual capstone comparison: FP32, PTQ INT8, QAT INT8, pruned and
pruned + INT8, per backend, with accuracy, p50, p99, throughput, size and speedup over FP32
PyTorch eager. Nothing is re-run: the figures are those of the run that wrote the file.

    pytest perf --perf-report out && python benchmarks/cpu_matrix_table.py out/results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perfgate.report import human_bytes, markdown_table
from perfgate.results import CaseResult, load_results

TECHNIQUES = ("fp32", "int8_static", "qat", "prune_structured", "prune_structured_int8", "prune_unstructured")
BACKENDS = ("torch_cpu", "torch_compile_cpu", "onnxruntime_cpu", "openvino_cpu", "litert_cpu")
HEADERS = ("technique", "backend", "top-1", "Δ top-1", "p50 ms", "p99 ms", "samples/s", "size", "speedup")


def rows(cases: list[CaseResult], model: str, batch: int) -> list[list[str]]:
    """One row per technique x backend of ``model`` at ``batch``, in the table's fixed order."""
    found = {(c.technique, c.backend): c for c in cases if c.model == model and c.batch_size == batch}
    reference = found.get(("fp32", "torch_cpu"))
    ref_p50 = reference.latency.p50_ms if reference and reference.latency else None
    out = []
    for technique in TECHNIQUES:
        for backend in BACKENDS:
            case = found.get((technique, backend))
            if case is None or case.latency is None or not case.accuracy:
                continue
            lat = case.latency
            delta = case.accuracy.get("metric_delta")
            out.append(
                [
                    technique,
                    backend,
                    f"{case.accuracy['metric']:.4f}",
                    f"{delta:+.4f}" if delta is not None else "-",
                    f"{lat.p50_ms:.3f}",
                    f"{lat.p99_ms:.3f}" + ("~" if "p99" in lat.low_confidence else ""),
                    f"{lat.throughput_per_s:.0f}",
                    human_bytes(case.artifact_bytes),
                    f"{ref_p50 / lat.p50_ms:.2f}x" if ref_p50 else "-",
                ]
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results.json written by --perf-report")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the table (default: 1)")
    args = parser.parse_args(argv)
    cases = load_results(args.results).cases
    for model in sorted({c.model for c in cases}):
        table = rows(cases, model, args.batch)
        if table:
            print(f"\n### {model} (batch {args.batch})\n")
            print("\n".join(markdown_table(HEADERS, table)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
