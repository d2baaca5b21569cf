"""What a person reads: the terminal summary, ``results.json`` and ``report.md``."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from perfgate.cache import atomic_write_text
from perfgate.jsonio import write_json
from perfgate.pareto import pareto_front
from perfgate.results import RESULTS_SCHEMA_VERSION, CaseResult, ResultsDocument

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


def accuracy_score(result: CaseResult) -> float | None:
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
            r.batch_size: r.latency.p50_ms
            for r in group
            if (r.technique, r.backend) == REFERENCE and r.latency
        }
        timed = [r for r in group if r.latency and accuracy_score(r) is not None and r.status != "error"]
        front = dict(
            zip(
                [r.case_id for r in timed],
                pareto_front([(r.latency.p50_ms, accuracy_score(r)) for r in timed]),  # type: ignore[union-attr,misc]
                strict=True,
            )
        )
        rows = []
        for r in group:
            ref = reference.get(r.batch_size)
            score = accuracy_score(r)
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
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
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
    lines.append(
        "speedup: p50 of fp32 on torch_cpu at the same batch size / p50 of the case; * Pareto-optimal"
    )
    return lines


def regression_lines(results: Sequence[CaseResult], drift: Sequence[dict[str, str]] = ()) -> list[str]:
    """Every compared case, failures first (baseline p50, current p50, ratio, CI, verdict), then drift.

    :param results: this run's cases; those without a regression verdict are left out.
    :param drift: environment drift since the baseline, as ``{"what", "baseline", "current"}``.
    """
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
                _fmt(v.get("reference_factor"), ".3f"),
                verdict.status,  # type: ignore[union-attr]
            ]
        )
    headers = ("case", "base p50 ms", "now p50 ms", "ratio", "95% CI", "machine", "verdict")
    lines = ["", *text_table(headers, rows)]
    lines.append(
        "ratio: p50 now / p50 baseline, divided by the machine factor (reference workload now / then)"
    )
    return lines + _drift_text(drift)


def _drift_text(drift: Sequence[dict[str, str]]) -> list[str]:
    if not drift:
        return ["environment drift since the baseline: none"]
    return [
        "environment drift since the baseline:",
        *(f"  {d['what']}: {d['baseline']} -> {d['current']}" for d in drift),
    ]


def results_document(results: Sequence[CaseResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``results.json`` document (docs/results-schema.md): metadata, then every case by id."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "perfgate_version": _perfgate_version(),
        **meta,
        "cases": [r.to_dict() for r in sorted(results, key=lambda r: r.case_id)],
    }


def _perfgate_version() -> str:
    try:
        return importlib.metadata.version("perfgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def configuration(result: CaseResult) -> str:
    """The case id without its model: what is compared across runners within one model."""
    return f"{result.technique}-{result.backend}-b{result.batch_size}"


def _md(text: str) -> str:
    """A table cell that cannot break the table: pipes escaped, newlines flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


def failure_rows(documents: Sequence[ResultsDocument]) -> list[list[str]]:
    """Regressions first, then accuracy failures, then errors: one row per failed gate or error."""
    rank = {"regression": 0, "error": 2}
    rows = []
    for doc in documents:
        for r in doc.cases:
            for v in r.verdicts:
                if v.failed:
                    rows.append((rank.get(v.gate, 1), doc.runner, r.case_id, v.gate, v.message))
            if r.status == "error":
                rows.append((2, doc.runner, r.case_id, "error", r.error or "the case did not run to its end"))
    return [[f"`{case}`", runner, gate, _md(message)] for _, runner, case, gate, message in sorted(rows)]


def _failures_section(documents: Sequence[ResultsDocument]) -> list[str]:
    rows = failure_rows(documents)
    lines = ["## Regressions and accuracy failures", ""]
    if not rows:
        return [*lines, "None: every case kept its accuracy, and no compared case regressed.", ""]
    return [*lines, *markdown_table(("case", "runner", "gate", "why"), rows), ""]


def comparison_rows(results: Sequence[CaseResult]) -> list[list[str]]:
    """Markdown rows of every case judged against the baseline, failures first."""
    order = {"fail": 0, "improved": 1, "new": 2, "pass": 3}
    compared = sorted(
        ((r, v) for r in results if (v := r.verdict("regression")) is not None and v.status != "new"),
        key=lambda rv: (order.get(rv[1].status, 9), rv[0].case_id),
    )
    rows = []
    for result, verdict in compared:
        values, ci = verdict.values, verdict.values.get("ratio_ci")
        rows.append(
            [
                f"`{result.case_id}`",
                _fmt(values.get("baseline_p50_ms"), ".4f"),
                _fmt(values.get("current_p50_ms"), ".4f"),
                _fmt(values.get("ratio"), ".3f"),
                f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-",
                _fmt(values.get("reference_factor"), ".3f"),
                f"**{verdict.status}**" if verdict.failed else verdict.status,
            ]
        )
    return rows


COMPARISON_COLUMNS = ("case", "base p50 ms", "now p50 ms", "ratio", "95% CI", "machine factor", "verdict")


def _comparison_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """The baseline comparison of every compared case, per runner; cases without a baseline folded."""
    lines: list[str] = []
    for doc in documents:
        rows = comparison_rows(doc.cases)
        new = [r.case_id for r in doc.cases if (v := r.verdict("regression")) and v.status == "new"]
        if rows or new:
            lines += [f"## Baseline comparison: runner `{doc.runner}`", ""]
        if new:
            # Folded, not a row each: a new runner or a grown matrix would bury the verdicts.
            summary = f"{len(new)} cases have no baseline for this runner yet (new)"
            lines += [f"<details><summary>{summary}</summary>", "", ", ".join(new), "", "</details>", ""]
        if rows:
            lines += [*markdown_table(COMPARISON_COLUMNS, rows), "", RATIO_NOTE, ""]
    return lines


RATIO_NOTE = "ratio: p50 now / p50 baseline, over the machine factor (reference workload now / then)."


def _model_table(results: Sequence[CaseResult]) -> list[str]:
    lines: list[str] = []
    for rows in model_rows(results).values():
        cells = [_cells(row) for row in rows]
        for cell in cells:
            cell[0] = f"`{cell[0]}`"
            cell[8] = "**yes**" if cell[8] else ""
        lines += markdown_table(COLUMNS, cells)
    return lines


def _by_model(documents: Sequence[ResultsDocument]) -> dict[str, dict[str, list[CaseResult]]]:
    """model -> runner -> cases, in a stable order."""
    grouped: dict[str, dict[str, list[CaseResult]]] = defaultdict(dict)
    for doc in documents:
        for r in doc.cases:
            grouped[r.model].setdefault(doc.runner, []).append(r)
    return {model: grouped[model] for model in sorted(grouped)}


def _passing_p50(result: CaseResult) -> float | None:
    """The p50 of a case that ran and passed every gate; other cases cannot be 'best'."""
    if result.status != "passed" or result.latency is None or any(v.failed for v in result.verdicts):
        return None
    return result.latency.p50_ms


def _threads(results: Sequence[CaseResult]) -> str:
    """The runner's usual thread settings: per setting, the value most of its cases ran with.

    Most, not all: a thread-tuning technique overrides them for its own cases on purpose.
    """
    values: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        for key, value in r.settings.items():
            if "thread" in key and value is not None:
                values[key][str(value)] += 1
    return ", ".join(f"{key}={count.most_common(1)[0][0]}" for key, count in sorted(values.items())) or "-"


def best_per_runner_rows(documents: Sequence[ResultsDocument]) -> list[list[str]]:
    """Per model and runner: the fastest passing case, the most accurate one, and the frontier."""
    rows = []
    for model, runners in _by_model(documents).items():
        for runner, cases in runners.items():
            timed = [r for r in cases if _passing_p50(r) is not None]
            fastest = min(timed, key=lambda r: (_passing_p50(r), r.case_id), default=None)
            scored = [r for r in timed if accuracy_score(r) is not None]
            best_acc = max(scored, key=lambda r: (accuracy_score(r), -_passing_p50(r)), default=None)  # type: ignore[operator]
            by_id = {r.case_id: r for r in cases}
            front = [
                by_id[row["case"]] for row in next(iter(model_rows(cases).values()), []) if row["pareto"]
            ]
            rows.append(
                [
                    model,
                    f"`{runner}`",
                    _threads(cases),
                    f"`{configuration(fastest)}`" if fastest else "-",
                    _fmt(_passing_p50(fastest), ".4f") if fastest else "-",
                    f"`{configuration(best_acc)}` ({_fmt(accuracy_score(best_acc), '.4f')})"
                    if best_acc
                    else "-",
                    ", ".join(f"`{configuration(r)}`" for r in front) or "-",
                ]
            )
    return rows


def _runner_pivot(runners: dict[str, list[CaseResult]]) -> list[str]:
    """p50 of each configuration on each runner; the fastest passing one per runner in bold."""
    names = list(runners)
    p50 = {(runner, configuration(r)): r for runner, cases in runners.items() for r in cases}
    best = {}
    for runner, cases in runners.items():
        timed = [r for r in cases if _passing_p50(r) is not None]
        if timed:
            best[runner] = configuration(min(timed, key=lambda r: (_passing_p50(r), r.case_id)))
    rows = []
    for config in sorted({c for _, c in p50}):
        cells = [f"`{config}`"]
        for runner in names:
            r = p50.get((runner, config))
            text = _fmt(r.latency.p50_ms, ".4f") if r and r.latency else "-"
            if r and r.status != "passed":
                text += f" ({verdict_word(r)})"
            cells.append(f"**{text}**" if best.get(runner) == config else text)
        rows.append(cells)
    return markdown_table(("configuration", *(f"{n} p50 ms" for n in names)), rows)


def _model_sections(documents: Sequence[ResultsDocument], plots: dict[str, list[Path]]) -> list[str]:
    lines: list[str] = []
    merged = len(documents) > 1
    for model, runners in _by_model(documents).items():
        lines += [f"## {model}", ""]
        png = next((p for p in plots.get(model, []) if p.suffix == ".png"), None)
        if png is not None:
            lines += [f"![accuracy against p50 latency, {model}]({png.name})", ""]
        if merged:
            lines += ["### p50 latency by runner", "", *_runner_pivot(runners), ""]
        for runner, cases in runners.items():
            if merged:
                lines += [f"### runner `{runner}` (threads: {_threads(cases)})", ""]
            lines += [*_model_table(cases), ""]
    return lines


ENVIRONMENT_KEYS = (
    "cpu_model",
    "cpu_cores",
    "machine",
    "isa",
    "gpus",
    "cuda_version",
    "cudnn_version",
    "python",
)


def _environment_value(machine: dict[str, Any], key: str) -> str:
    value = machine.get(key)
    if key == "gpus":
        return ", ".join(f"{g.get('name')} (sm {g.get('compute_capability')})" for g in value or []) or "none"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "-"
    return "-" if value is None else str(value)


def _environment_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """Each runner's machine and library versions side by side; differing rows are marked."""
    machines = [doc.meta.get("machine") or {} for doc in documents]
    libraries = sorted({lib for m in machines for lib in (m.get("libraries") or {})})
    rows = []
    for key in ENVIRONMENT_KEYS:
        rows.append((key, [_environment_value(m, key) for m in machines]))
    for lib in libraries:
        rows.append((lib, [str((m.get("libraries") or {}).get(lib, "-")) for m in machines]))
    differs = len(documents) > 1
    cells = [
        [("**" + name + "**") if differs and len(set(values)) > 1 else name, *map(_md, values)]
        for name, values in rows
    ]
    lines = ["## Environment", "", *markdown_table(("", *(f"`{d.runner}`" for d in documents)), cells), ""]
    if differs:
        lines += ["Rows in bold differ between runners.", ""]
    return lines


def drift_lines(entries: Sequence[Any]) -> list[str]:
    """Render environment drift entries, whatever their shape: dicts as a table, others as bullets.

    The entries come from the run that wrote the results (``meta['drift']``); this renders them
    without knowing their fields, so the drift detector can grow without touching the report.
    """
    dicts = [e for e in entries if isinstance(e, dict)]
    keys: list[str] = []
    for entry in dicts:
        keys += [k for k in entry if k not in keys]
    lines = (
        markdown_table(keys, ([_md(_drift_value(e.get(k))) for k in keys] for e in dicts)) if dicts else []
    )
    return lines + [f"- {_md(_drift_value(e))}" for e in entries if not isinstance(e, dict)]


def _drift_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _drift_section(documents: Sequence[ResultsDocument]) -> list[str]:
    lines = ["## Environment drift", ""]
    recorded = [doc for doc in documents if "drift" in doc.meta]
    if not recorded:
        return [
            *lines,
            "Not recorded: drift is checked against the baseline under `--benchmark-compare`.",
            "",
        ]
    for doc in recorded:
        head = [f"### runner `{doc.runner}`", ""] if len(documents) > 1 else []
        body = drift_lines(doc.drift) or ["None: the environment matches the baseline's."]
        lines += [*head, *body, ""]
    return lines


def _summary_line(documents: Sequence[ResultsDocument]) -> str:
    cases = [r for doc in documents for r in doc.cases]
    counts = {s: sum(r.status == s for r in cases) for s in ("passed", "failed", "error")}
    generated = sorted({str(doc.meta.get("generated", "")) for doc in documents} - {""})
    tail = f"; generated {generated[-1]}" if generated else ""
    passed, failed, errors = counts["passed"], counts["failed"], counts["error"]
    return f"{len(cases)} cases: {passed} passed, {failed} failed, {errors} errors{tail}."


def report_markdown(
    documents: Sequence[ResultsDocument], plots: dict[str, list[Path]] | None = None
) -> list[str]:
    """``report.md``: failures first, then one section per model, then environment and drift.

    :param documents: one results document per runner; several make a merged report.
    :param plots: model -> plot files written next to the report, linked from its section.
    """
    runners = ", ".join(f"`{doc.runner}`" for doc in documents)
    lines = [
        f"# perfgate report: runner{'s' if len(documents) > 1 else ''} {runners}",
        "",
        _summary_line(documents),
        "",
    ]
    lines += _failures_section(documents)
    if len(documents) > 1:
        lines += [
            "## Best per runner",
            "",
            *markdown_table(BEST_COLUMNS, best_per_runner_rows(documents)),
            "",
        ]
    lines += _comparison_section(documents)
    lines += _model_sections(documents, plots or {})
    lines += [LEGEND, ""]
    return lines + _environment_section(documents) + _drift_section(documents)


BEST_COLUMNS = ("model", "runner", "threads", "fastest passing", "p50 ms", "most accurate", "Pareto frontier")
LEGEND = (
    "speedup is over fp32 on torch_cpu at the same batch size and runner; **yes** marks the Pareto frontier "
    "(no other case of the model is both faster and more accurate); ~ marks a p99 from too few samples."
)


def markdown_lines(results: Sequence[CaseResult], meta: dict[str, Any]) -> list[str]:
    """``report.md`` of one runner's results (kept for callers that hold no document)."""
    return report_markdown([ResultsDocument(meta=meta, cases=list(results))])


def render(directory: Path, documents: Sequence[ResultsDocument], plots: bool = True) -> list[Path]:
    """Write ``report.md`` and, with ``plots``, ``pareto-<model>.png``/``.svg`` into ``directory``.

    :param directory: created if missing.
    :param documents: one per runner; their cases are rendered, never re-run.
    :param plots: draw the Pareto plots (needs matplotlib).
    :returns: the files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    if plots:
        from perfgate.plot import write_pareto_plots

        written = write_pareto_plots(directory, documents)
    atomic_write_text(directory / "report.md", "\n".join(report_markdown(documents, written)) + "\n")
    return [directory / "report.md", *(p for paths in written.values() for p in paths)]


def write_report(directory: Path, results: Sequence[CaseResult], meta: dict[str, Any]) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the Pareto plots into ``directory``.

    :param meta: runner, machine and (if the drift check ran) ``drift``, stored beside the cases.
    :returns: the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = results_document(results, meta)
    write_json(directory / "results.json", document)
    meta = {k: v for k, v in document.items() if k != "cases"}
    return [
        directory / "results.json",
        *render(directory, [ResultsDocument(meta, list(results))], plots=_can_plot()),
    ]


def _can_plot() -> bool:
    """Plots need matplotlib (the ``report`` extra); without it the report still has its tables."""
    return importlib.util.find_spec("matplotlib") is not None
