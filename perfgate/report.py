"""What a person reads: the terminal summary, ``results.json`` and ``report.md``."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from perfgate.cache import atomic_write_text
from perfgate.jsonio import write_json
from perfgate.pareto import pareto_front
from perfgate.results import RESULTS_SCHEMA_VERSION, CaseResult

REFERENCE = ("fp32", "torch_cpu")  # the speedup column is over this technique and backend
COLUMNS = ("case", "p50 ms", "p99 ms", "thr/s", "acc", "Δacc", "size", "speedup", "pareto", "verdict")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _accuracy_score(result: CaseResult) -> float | None:
    """The task metric if the model has one, else top-1 agreement with the reference."""
    if not result.accuracy:
        return None
    if result.accuracy.get("metric") is not None:
        return float(result.accuracy["metric"])
    return float(result.accuracy["fidelity"]["top1_agreement"])


def verdict_word(result: CaseResult) -> str:
    if result.status == "error":
        return "ERROR"
    failed = [v.gate for v in result.verdicts if v.failed]
    if failed:
        return "FAIL " + ",".join(failed)
    regression = result.verdict("regression")
    return regression.status if regression else "ok"


def model_rows(results: Sequence[CaseResult]) -> dict[str, list[dict[str, Any]]]:
    """One row per case, grouped by model, with speedup and Pareto mark computed in the group."""
    by_model: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_model[result.model].append(result)
    tables = {}
    for model, group in sorted(by_model.items()):
        group.sort(key=lambda r: (r.batch_size, r.technique, r.backend))
        reference = {
            r.batch_size: r.latency.p50_ms for r in group if (r.technique, r.backend) == REFERENCE and r.latency
        }
        timed = [r for r in group if r.latency and _accuracy_score(r) is not None and r.status != "error"]
        front = dict(
            zip(
                [r.case_id for r in timed],
                pareto_front([(r.latency.p50_ms, _accuracy_score(r)) for r in timed]),  # type: ignore[union-attr,misc]
            )
        )
        rows = []
        for r in group:
            ref = reference.get(r.batch_size)
            score = _accuracy_score(r)
            delta = r.accuracy.get("metric_delta") if r.accuracy else None
            rows.append(
                {
                    "case": r.case_id,
                    "p50_ms": r.latency.p50_ms if r.latency else None,
                    "p99_ms": r.latency.p99_ms if r.latency else None,
                    "p99_low_confidence": bool(r.latency and "p99" in r.latency.low_confidence),
                    "throughput_per_s": r.latency.throughput_per_s if r.latency else None,
                    "accuracy": score,
                    "accuracy_delta": delta,
                    "size_bytes": r.artifact_bytes,
                    "speedup": ref / r.latency.p50_ms if ref and r.latency else None,
                    "pareto": front.get(r.case_id, False),
                    "verdict": verdict_word(r),
                }
            )
        tables[model] = rows
    return tables


def _cells(row: dict[str, Any]) -> list[str]:
    p99 = _fmt(row["p99_ms"], ".4f") + ("~" if row["p99_low_confidence"] else "")
    return [
        row["case"],
        _fmt(row["p50_ms"], ".4f"),
        p99,
        _fmt(row["throughput_per_s"], ".0f"),
        _fmt(row["accuracy"], ".4f"),
        _fmt(row["accuracy_delta"], "+.4f"),
        human_bytes(row["size_bytes"]),
        "-" if row["speedup"] is None else f"{row['speedup']:.2f}x",
        "*" if row["pareto"] else "",
        row["verdict"],
    ]


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def terminal_lines(results: Sequence[CaseResult]) -> list[str]:
    """One table per model: technique x backend with latency, accuracy, size and speedup."""
    lines: list[str] = []
    for model, rows in model_rows(results).items():
        lines += ["", f"model {model}", *text_table(COLUMNS, (_cells(r) for r in rows))]
    if any(r["p99_low_confidence"] for rows in model_rows(results).values() for r in rows):
        lines.append("~ p99 from too few samples to be trusted (fewer than 10 beyond it)")
    lines.append("speedup: p50 of fp32 on torch_cpu at the same batch size / p50 of the case; * Pareto-optimal")
    return lines


def regression_lines(results: Sequence[CaseResult]) -> list[str]:
    """Every compared case, failures first: baseline p50, current p50, ratio, verdict."""
    compared = [(r, r.verdict("regression")) for r in results if r.verdict("regression")]
    if not compared:
        return []
    order = {"fail": 0, "improved": 1, "new": 2, "pass": 3}
    compared.sort(key=lambda rv: (order.get(rv[1].status, 9), rv[0].case_id))  # type: ignore[union-attr]
    rows = []
    for result, verdict in compared:
        v = verdict.values  # type: ignore[union-attr]
        ci = v.get("ratio_ci")
        rows.append(
            [
                result.case_id,
                _fmt(v.get("baseline_p50_ms"), ".4f"),
                _fmt(v.get("current_p50_ms"), ".4f"),
                _fmt(v.get("ratio"), ".3f"),
                f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                verdict.status,  # type: ignore[union-attr]
            ]
        )
    return ["", *text_table(("case", "base p50 ms", "now p50 ms", "ratio", "95% CI", "verdict"), rows)]


def results_document(results: Sequence[CaseResult], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "cases": [r.to_dict() for r in sorted(results, key=lambda r: r.case_id)],
    }


def markdown_lines(results: Sequence[CaseResult], meta: dict[str, Any]) -> list[str]:
    failures = [r for r in results if r.status in ("failed", "error")]
    lines = [f"# perfgate report: runner `{meta.get('runner', '?')}`", ""]
    if failures:
        lines += ["## Failures", ""]
        lines += [f"- **{r.case_id}**: {verdict_word(r)}" + (f" ({r.error})" if r.error else "") for r in failures]
        lines.append("")
    for model, rows in model_rows(results).items():
        lines += [f"## {model}", "", *markdown_table(COLUMNS, (_cells(r) for r in rows)), ""]
    lines.append("speedup is over fp32 on torch_cpu at the same batch size; * marks the Pareto frontier.")
    return lines


def write_report(directory: Path, results: Sequence[CaseResult], meta: dict[str, Any]) -> list[Path]:
    """Write ``results.json`` and ``report.md`` into ``directory``; returns the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "results.json", results_document(results, meta))
    atomic_write_text(directory / "report.md", "\n".join(markdown_lines(results, meta)) + "\n")
    return [directory / "results.json", directory / "report.md"]
