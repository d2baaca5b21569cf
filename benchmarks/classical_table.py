"""Render the classical models' table (docs/classical.md) from a saved results.json.

One table per classical model: a row per technique x backend, with its metric and, per batch
size, the p50 latency, the samples per second and the speedup over the estimator itself (fp32 on
`sklearn` at that batch size). Nothing is re-run: the figures are those of the run that wrote it.

    pytest perf -m classical --perf-report out && python benchmarks/classical_table.py out/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perfgate.report import markdown_table
from perfgate.results import CaseResult, load_results

REFERENCE = ("fp32", "sklearn")


def tables(cases: list[CaseResult]) -> list[str]:
    # A classical model is one with a case on sklearn, its reference; every case of it is shown.
    models = sorted({c.model for c in cases if c.backend == "sklearn"})
    lines: list[str] = []
    for model in models:
        group = [c for c in cases if c.model == model and c.latency and c.accuracy]
        batches = sorted({c.batch_size for c in group})
        reference = {
            c.batch_size: c.latency.p50_ms
            for c in group
            if (c.technique, c.backend) == REFERENCE and c.latency
        }
        metric = next((c.accuracy.get("metric_name") for c in group if c.accuracy), "metric")
        headers = ["technique", "backend", str(metric)]
        for batch in batches:
            headers += [f"b{batch} p50 ms", f"b{batch} samples/s", f"b{batch} speedup"]
        rows = []
        for technique, backend in sorted(
            {(c.technique, c.backend) for c in group}, key=lambda k: (k[0] != "fp32", k)
        ):
            row_cases = {c.batch_size: c for c in group if (c.technique, c.backend) == (technique, backend)}
            any_case = next(iter(row_cases.values()))
            row = [technique, backend, f"{any_case.accuracy['metric']:.4f}"]
            for batch in batches:
                case = row_cases.get(batch)
                if case is None or case.latency is None:
                    row += ["-", "-", "-"]
                    continue
                ref = reference.get(batch)
                speedup = f"{ref / case.latency.p50_ms:.2f}x" if ref else "-"
                row += [f"{case.latency.p50_ms:.4f}", f"{case.latency.throughput_per_s:.0f}", speedup]
            rows.append(row)
        lines += [f"### {model}", "", *markdown_table(headers, rows), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="a results.json written by pytest --perf-report")
    args = parser.parse_args()
    print("\n".join(tables(load_results(Path(args.results)).cases)))


if __name__ == "__main__":
    main()
