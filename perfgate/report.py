"""What a person reads: the terminal summary, ``results.json`` and ``report.md``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import importlib.util
import json
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from perfgate.cache import atomic_write_text
from perfgate.gates import Verdict
from perfgate.jsonio import write_json
from perfgate.pareto import Score, model_score
from perfgate.profiling import growth, growth_lines
from perfgate.results import RESULTS_SCHEMA_VERSION, UNFINISHED, CaseResult, ResultsDocument
from perfgate.units import human_bytes

# A model table's columns, by name: each row is a dict keyed by them (:func:`_cells`). The score's
# two, "acc" and "Δacc", are headed by the model's score (``mse``, ``Δmse``; :func:`columns`).
COLUMNS = ("case", "p50 ms", "p99 ms", "thr/s", "acc", "Δacc", "size", "speedup", "pareto", "verdict")


def reference() -> tuple[str, tuple[str, ...]]:
    """The technique and the backends the speedup column is over, from the registries: ``fp32``, and
    each model kind's reference backend (``torch_cpu``, ``sklearn``; perfgate.model_kinds)."""
    from perfgate.backends import reference_backend
    from perfgate.model_kinds import MODEL_KINDS
    from perfgate.techniques import reference_technique

    return reference_technique(), tuple(dict.fromkeys(reference_backend(kind) for kind in MODEL_KINDS))


def reference_words() -> str:
    """``fp32 on torch_cpu (sklearn for classical models)``: what the speedup is over, in words."""
    from perfgate.backends import reference_backend
    from perfgate.model_kinds import MODEL_KINDS, TORCH

    technique, _ = reference()
    others = [f"{reference_backend(kind)} for {kind} models" for kind in MODEL_KINDS if kind != TORCH]
    return f"{technique} on {reference_backend(TORCH)}" + (f" ({'; '.join(others)})" if others else "")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _score_fmt(value: float | None, signed: bool = False) -> str:
    """A score or its delta: four decimals, or three significant digits where those would hide it."""
    if value is None:
        return "-"
    sign = "+" if signed else ""
    return format(value, f"{sign}.4f" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{sign}.3e")


def is_incomparable(verdict: Verdict | None) -> bool:
    """A regression verdict that could not compare: the baseline is from other hardware or another
    major library version. Not judged, unless ``--perf-require-baseline`` made it a failure."""
    if verdict is None or verdict.gate != "regression":
        return False
    return verdict.status == "incomparable" or (verdict.failed and "incomparable" in verdict.message.lower())


def incomparable_reasons(verdict: Verdict) -> str:
    """Why a baseline could not be compared, one reason after another."""
    reasons = verdict.values.get("reasons") or []
    return "; ".join(str(r) for r in reasons) or verdict.message


EFFECT_FLAGGED = ("fail", "allowed")  # technique_effect statuses marked with "!" in the tables
EFFECT_NOTE = "! the technique changed nothing or the artifact is not smaller than FP32: see the verdict"


def _effect_why(verdict: Verdict) -> str:
    problems = verdict.values.get("problems") or []
    why = "; ".join(str(p) for p in problems) or verdict.message
    return f"{verdict.status}: {why}"


def verdict_word(result: CaseResult) -> str:
    if result.status in UNFINISHED:
        return result.status.upper()
    failed = ["incomparable" if is_incomparable(v) else v.gate for v in result.verdicts if v.failed]
    if failed:
        return "FAIL " + ",".join(failed)
    regression = result.verdict("regression")
    return regression.status if regression else "ok"


def _grouped(results: Sequence[CaseResult]) -> dict[str, list[CaseResult]]:
    """model -> its cases, models sorted, cases by batch size, technique and backend."""
    by_model: dict[str, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_model[result.model].append(result)
    for group in by_model.values():
        group.sort(key=lambda r: (r.batch_size, r.technique, r.backend))
    return {model: by_model[model] for model in sorted(by_model)}


def model_rows(results: Sequence[CaseResult]) -> dict[str, list[dict[str, Any]]]:
    """One row per case, grouped by model, with speedup and Pareto mark computed in the group.

    The score of a model is ``model_score`` of its cases; the frontier follows its direction.
    """
    return {model: _rows(group, model_score(group)) for model, group in _grouped(results).items()}


def _rows(group: Sequence[CaseResult], score: Score) -> list[dict[str, Any]]:
    p50s = _reference_p50s(group)
    front = score.front(group)
    rows = []
    for r in group:
        ref = p50s.get(r.batch_size)
        effect = r.verdict("technique_effect")
        rows.append(
            {
                "case": r.case_id,
                "p50_ms": r.latency.p50_ms if r.latency else None,
                "p99_ms": r.latency.p99_ms if r.latency else None,
                "p99_low_confidence": bool(r.latency and "p99" in r.latency.low_confidence),
                "throughput_per_s": r.latency.throughput_per_s if r.latency else None,
                "accuracy": score.value(r),
                "accuracy_delta": score.delta(r),
                "size_bytes": r.artifact_bytes,
                "speedup": ref / r.latency.p50_ms if ref and r.latency else None,
                "pareto": front.get(r.case_id, False),
                "verdict": verdict_word(r),
                "effect": _effect_why(effect) if effect and effect.status in EFFECT_FLAGGED else None,
            }
        )
    return rows


def columns(score: Score) -> tuple[str, ...]:
    """The table's headers, in :data:`COLUMNS` order, the score's two named after it (``mse``, ``Δmse``)."""
    headed = {"acc": score.header, "Δacc": f"Δ{score.header}"}
    return tuple(headed.get(column, column) for column in COLUMNS)


def _reference_p50s(group: Sequence[CaseResult]) -> dict[int, float]:
    """batch size -> p50 of the model's reference case: fp32 on its kind's reference backend.

    A results file written before cases recorded their model kind reads every case as torch: its
    group then falls back to any kind's reference backend, the one it holds.
    """
    from perfgate.backends import reference_backend

    technique, every = reference()
    kinds = {r.model_kind for r in group}
    for backends in ([reference_backend(kinds.pop())] if len(kinds) == 1 else [], every):
        p50s = {
            r.batch_size: r.latency.p50_ms
            for r in group
            if r.technique == technique and r.backend in backends and r.latency
        }
        if p50s:
            return p50s
    return {}


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """A row's text, keyed by column name."""
    p99 = _fmt(row["p99_ms"], ".4f") + ("~" if row["p99_low_confidence"] else "")
    return {
        "case": row["case"],
        "p50 ms": _fmt(row["p50_ms"], ".4f"),
        "p99 ms": p99,
        "thr/s": _fmt(row["throughput_per_s"], ".0f"),
        "acc": _score_fmt(row["accuracy"]),
        "Δacc": _score_fmt(row["accuracy_delta"], signed=True),
        "size": human_bytes(row["size_bytes"]) + (" !" if row.get("effect") else ""),
        "speedup": "-" if row["speedup"] is None else f"{row['speedup']:.2f}x",
        "pareto": "*" if row["pareto"] else "",
        "verdict": row["verdict"],
    }


def _in_order(cells: dict[str, str]) -> list[str]:
    """The cells of one row in :data:`COLUMNS` order (a column without a cell is a KeyError)."""
    return [cells[column] for column in COLUMNS]


def text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _effect_notes(rows: Sequence[dict[str, Any]], indent: str = "  ") -> list[str]:
    """Under a table with flagged sizes: what ``!`` means, then each flagged case and why."""
    flagged = [r for r in rows if r.get("effect")]
    if not flagged:
        return []
    return [EFFECT_NOTE, *(f"{indent}{r['case']}: {r['effect']}" for r in flagged)]


def terminal_lines(results: Sequence[CaseResult]) -> list[str]:
    """One table per model: technique x backend with latency, the model's metric, size and speedup."""
    lines: list[str] = []
    low_confidence = False
    for model, group in _grouped(results).items():
        score = model_score(group)
        rows = _rows(group, score)
        low_confidence = low_confidence or any(r["p99_low_confidence"] for r in rows)
        lines += [
            "",
            f"model {model}  metric: {score.describe()}",
            *text_table(columns(score), (_in_order(_cells(r)) for r in rows)),
            *_effect_notes(rows),
        ]
    if low_confidence:
        lines.append("~ p99 from too few samples to be trusted (fewer than 10 beyond it)")
    lines.append(
        f"speedup: p50 of {reference_words()} at the same batch size / p50 of the case; * Pareto-optimal; "
        "Δ: the case's metric - the FP32 reference's"
    )
    return lines


def _comparison_order(verdict: Verdict) -> int:
    """Regressions, then failures for incomparability, improvements, incomparable, new, passes."""
    if is_incomparable(verdict):
        return 1 if verdict.failed else 3
    return {"fail": 0, "improved": 2, "new": 4, "pass": 5}.get(verdict.status, 9)


def _comparison_status(verdict: Verdict) -> str:
    return "fail (incomparable)" if verdict.failed and is_incomparable(verdict) else verdict.status


def regression_lines(results: Sequence[CaseResult], drift: Sequence[dict[str, str]] = ()) -> list[str]:
    """Every compared case, failures first (baseline p50, current p50, ratio, CI, verdict), then drift.

    Incomparable cases (a baseline from other hardware or another major library version) sort
    after regressions and improvements, and their reasons are listed under the table.

    :param results: this run's cases; those without a regression verdict are left out.
    :param drift: environment drift since the baseline, as ``{"what", "baseline", "current"}``.
    """
    compared = [(r, v) for r in results if (v := r.verdict("regression")) is not None]
    if not compared:
        return []
    compared.sort(key=lambda rv: (_comparison_order(rv[1]), rv[0].case_id))
    rows = [
        [result.case_id, *comparison_cells(verdict), _comparison_status(verdict)]
        for result, verdict in compared
    ]
    lines = ["", *text_table(COMPARISON_COLUMNS, rows), RATIO_NOTE]
    lines += unstable_lines(results)
    lines += [f"{r.case_id}: {v.message}" for r, v in compared if v.status == "insufficient"]
    lines += [
        f"incomparable: {result.case_id}: {incomparable_reasons(verdict)}"
        for result, verdict in compared
        if is_incomparable(verdict)
    ]
    lines += [f"{r.case_id}: {line}" for r in results if r.profile for line in growth_lines(r.profile)]
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


def _failure_rank(verdict: Verdict) -> tuple[int, str]:
    """Where a failed gate sorts among the failures, and the name it is shown under."""
    if is_incomparable(verdict):
        return 3, "regression (incomparable)"  # failed under --perf-require-baseline; not a slowdown
    return {"regression": 0, "technique_effect": 2}.get(verdict.gate, 1), verdict.gate


def failure_rows(documents: Sequence[ResultsDocument]) -> list[list[str]]:
    """One row per failed gate or error: regressions first, then accuracy failures (task metric,
    fidelity, baseline accuracy), techniques that changed nothing, baselines that could not be
    compared (under ``--perf-require-baseline``), then errors."""
    rows = []
    for doc in documents:
        for r in doc.cases:
            for v in r.verdicts:
                if v.failed:
                    rank, gate = _failure_rank(v)
                    rows.append((rank, doc.runner, r.case_id, gate, v.message))
            if r.status in UNFINISHED:
                rows.append(
                    (4, doc.runner, r.case_id, r.status, r.error or "the case did not run to its end")
                )
    return [[f"`{case}`", runner, gate, _md(message)] for _, runner, case, gate, message in sorted(rows)]


def _failures_section(documents: Sequence[ResultsDocument]) -> list[str]:
    rows = failure_rows(documents)
    lines = ["## Regressions and accuracy failures", ""]
    if not rows:
        return [*lines, "None: every case kept its accuracy, and no compared case regressed.", ""]
    return [
        *lines,
        *markdown_table(("case", "runner", "gate", "why"), rows),
        "",
        *_details_section(documents),
    ]


def _details_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """The full traceback of each error and the log tail of each crash, which the terminal leaves out."""
    lines = []
    for doc in documents:
        for r in doc.cases:
            if r.details:
                lines += [f"<details><summary><code>{r.case_id}</code>: {r.status}</summary>", "", "```", r.details.rstrip(), "```", "", "</details>", ""]  # fmt: skip
    return ["### Errors in full", "", *lines] if lines else []


def _run_notes(documents: Sequence[ResultsDocument]) -> list[str]:
    """Runs that died before this one, and perfgate runs that overlapped it on the machine."""
    lines = []
    for doc in documents:
        for lost in doc.meta.get("lost_runs") or []:
            case = f"while `{lost.get('running_case')}` was running (step: {lost.get('running_step')})" if lost.get("running_case") else "between cases"  # fmt: skip
            lines.append(f"- A previous run (started {lost.get('started')}) ended without finishing, {case}; its finished cases are in `{lost.get('journal')}`.")  # fmt: skip
        concurrent = doc.meta.get("concurrent_runs") or {}
        if concurrent.get("cases"):
            pids = ", ".join(str(r.get("pid")) for r in concurrent.get("runs", []))
            lines.append(f"- **{len(concurrent['cases'])} case(s) were timed while another perfgate run (pid {pids}) was running on this machine**: their latencies and verdicts are unreliable, and a refresh kept them out of the baseline.")  # fmt: skip
    return ["## Run warnings", "", *lines, ""] if lines else []


def comparison_rows(results: Sequence[CaseResult]) -> list[list[str]]:
    """Markdown rows of every case judged against the baseline, failures first.

    New and incomparable cases are left out: they were not judged (see ``incomparable_rows``).
    """
    compared = sorted(
        (
            (r, v)
            for r in results
            if (v := r.verdict("regression")) is not None and v.status != "new" and not is_incomparable(v)
        ),
        key=lambda rv: (_comparison_order(rv[1]), rv[0].case_id),
    )
    return [
        [
            f"`{result.case_id}`",
            *comparison_cells(verdict),
            f"**{verdict.status}**" if verdict.failed else verdict.status,
        ]
        for result, verdict in compared
    ]


def comparison_cells(verdict: Verdict) -> list[str]:
    """A compared case's figures: the baseline's sessions, the current p50, the ratio and the limit."""
    values = verdict.values
    sessions = values.get("baseline_sessions_ms") or []
    spread = (
        f"{min(sessions):.4f}-{max(sessions):.4f} ({len(sessions)})"
        if len(sessions) > 1
        else ("1 session" if sessions else "-")
    )
    if "history_runs" in values:  # the history gate: the median of the last accepted runs
        spread = f"{values['history_runs']} runs (history)"
    return [
        _fmt(values.get("baseline_p50_ms", values.get("history_median_ms")), ".4f"),
        spread,
        _fmt(values.get("current_p50_ms"), ".4f"),
        _fmt(values.get("ratio"), ".3f"),
        _fmt(values.get("upper_limit_ms"), ".4f"),
    ]


def unstable_lines(results: Sequence[CaseResult]) -> list[str]:
    """The compared cases whose baseline sessions vary by more than their threshold: at that
    threshold they would cry wolf, or (when one session caught a burst) the baseline is suspect."""
    lines = []
    for result in sorted(results, key=lambda r: r.case_id):
        verdict = result.verdict("regression")
        if verdict is None or not verdict.values.get("unstable"):
            continue
        v = verdict.values
        safe = math.ceil(v["between_spread"] * 100.0)
        lines.append(
            f"unstable at {v['threshold']:.0%}: {result.case_id}: its baseline sessions vary by "
            f"{v['between_spread']:.1%}; judged within {v['judged_at']:.1%} of their median. Refresh it "
            f"on a quieter runner, or set its threshold to {safe}% if it is this noisy"
        )
    return lines


def incomparable_rows(results: Sequence[CaseResult]) -> list[list[str]]:
    """Markdown rows of the cases whose baseline could not be compared, and why."""
    rows = []
    for result in sorted(results, key=lambda r: r.case_id):
        verdict = result.verdict("regression")
        if verdict is not None and is_incomparable(verdict):
            status = "**fail** (--perf-require-baseline)" if verdict.failed else "not judged"
            rows.append([f"`{result.case_id}`", _md(incomparable_reasons(verdict)), status])
    return rows


COMPARISON_COLUMNS = ("case", "base p50 ms", "base sessions ms", "now p50 ms", "ratio", "limit ms", "verdict")
INCOMPARABLE_COLUMNS = ("case", "why the baseline cannot be compared", "verdict")


def _comparison_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """The baseline comparison of every compared case, per runner; cases without a baseline folded."""
    lines: list[str] = []
    for doc in documents:
        rows = comparison_rows(doc.cases)
        new = [r.case_id for r in doc.cases if (v := r.verdict("regression")) and v.status == "new"]
        apart = incomparable_rows(doc.cases)
        if rows or new or apart:
            lines += [f"## Baseline comparison: runner `{doc.runner}`", ""]
        if new:
            # Folded, not a row each: a new runner or a grown matrix would bury the verdicts.
            summary = f"{len(new)} cases have no baseline for this runner yet (new)"
            lines += [f"<details><summary>{summary}</summary>", "", ", ".join(new), "", "</details>", ""]
        if rows:
            lines += [*markdown_table(COMPARISON_COLUMNS, rows), "", RATIO_NOTE, ""]
            if unstable := unstable_lines(doc.cases):
                lines += [*(f"- {line}" for line in unstable), ""]
        if apart:
            lines += [
                f"{len(apart)} incomparable: the baseline was taken on other hardware or with another "
                "major library version, so these were not compared (not regressions):",
                "",
                *markdown_table(INCOMPARABLE_COLUMNS, apart),
                "",
            ]
    return lines


ENERGY_COLUMNS = ("case", "runner", "source", "J/inference", "samples/J", "measured over")


def _energy_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """Energy per inference where a counter measured it; elsewhere why not, once per reason."""
    rows: list[list[str]] = []
    reasons: Counter[tuple[str, str]] = Counter()
    for doc in documents:
        for r in doc.cases:
            energy = r.energy or {}
            if energy.get("measured"):
                rows.append([f"`{r.case_id}`", doc.runner, f"{energy['source']} ({energy.get('scope')})",
                             f"{energy['joules_per_inference']:.3g}", f"{energy['samples_per_joule']:.4g}",
                             f"{energy['duration_s']:.2f} s, {energy['inferences']} samples"])  # fmt: skip
            elif energy.get("reason"):
                reasons[(doc.runner, energy["reason"])] += 1
    if not rows and not reasons:
        return []
    lines = ["## Energy", ""]
    if rows:
        lines += [*markdown_table(ENERGY_COLUMNS, rows), "", "Measured by the counter named, in a loop of its own after timing; never estimated.", ""]  # fmt: skip
    lines += [f"- Not measured on runner `{runner}` ({count} cases): {_md(reason)}" for (runner, reason), count in sorted(reasons.items())]  # fmt: skip
    return [*lines, ""]


GROWTH_COLUMNS = ("operator", "baseline us/call", "now us/call", "grew by us", "ratio")


def _profile_section(documents: Sequence[ResultsDocument]) -> list[str]:
    """Where each profiled case's time went: for a regression, the operators whose time grew most
    against the baseline's profile; the profiler's own files linked."""
    lines: list[str] = []
    for doc in documents:
        for r in sorted(doc.cases, key=lambda r: (r.profile or {}).get("trigger") != "failure"):
            profile = r.profile
            if not profile:
                continue
            what = {"failure": "regressed", "request": "asked for", "refresh": "refreshed"}.get(
                profile.get("trigger", ""), ""
            )
            lines += [f"### `{r.case_id}` ({what}, runner `{doc.runner}`)", ""]
            then = profile.get("baseline_operators_us")
            grown = growth(profile.get("operators_us") or {}, then) if then else []
            if grown:
                rows = [_growth_row(g) for g in grown]
                lines += [
                    f"Operators whose time grew most against the baseline's profile ({profile['source']}, "
                    f"{profile['runs']} calls):",
                    "",
                    *markdown_table(GROWTH_COLUMNS, rows),
                    "",
                ]
            else:
                lines += [_md(line) for line in growth_lines(profile)] + [""]
            files = profile.get("files") or []
            if files:
                lines += ["Profiler files: " + ", ".join(f"[{Path(f).name}]({f})" for f in files), ""]
    return ["## Where the time went", "", *lines] if lines else []


def _growth_row(g: Any) -> list[str]:
    ratio = "new" if g.ratio is None else f"x{g.ratio:.2f}"
    return [f"`{g.operator}`", _fmt(g.baseline_us, ".1f"), f"{g.current_us:.1f}", f"+{g.delta_us:.1f}", ratio]


RATIO_NOTE = (
    "p50: the median of a case's sessions' p50s; ratio: now / baseline; limit: the baseline sessions' "
    "median, widened by their half-spread and by the threshold (above it a case fails, if a "
    "confirmation after the other cases agrees)."
)


def _model_table(results: Sequence[CaseResult]) -> list[str]:
    lines: list[str] = []
    for group in _grouped(results).values():
        score = model_score(group)
        rows = _rows(group, score)
        cells = [_cells(row) for row in rows]
        for cell in cells:
            cell["case"] = f"`{cell['case']}`"
            cell["pareto"] = "**yes**" if cell["pareto"] else ""
        lines += [f"metric: `{score.name}` ({score.direction} is better)", ""]
        lines += markdown_table(columns(score), [_in_order(cell) for cell in cells])
        flagged = [r for r in rows if r["effect"]]
        if flagged:
            lines += ["", EFFECT_NOTE, "", *(f"- `{r['case']}`: {_md(r['effect'])}" for r in flagged)]
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
            score = model_score(cases)
            scored = [
                (r, value, p50)
                for r in cases
                if (p50 := _passing_p50(r)) is not None and (value := score.value(r)) is not None
            ]
            best = max(scored, key=lambda s: (score.rank(s[1]), -s[2]), default=None)
            best_acc = best[0] if best else None
            on_front = score.front(cases)
            front = [r for r in _grouped(cases)[model] if on_front.get(r.case_id)]
            rows.append(
                [
                    model,
                    f"`{runner}`",
                    _threads(cases),
                    f"`{configuration(fastest)}`" if fastest else "-",
                    _fmt(_passing_p50(fastest), ".4f") if fastest else "-",
                    f"`{configuration(best_acc)}` ({score.header} {_score_fmt(score.value(best_acc))})"
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
        pngs = [p for p in plots.get(model, []) if p.suffix == ".png"]
        score = model_score([r for cases in runners.values() for r in cases])
        for png in pngs:
            # The latency chart, then (where energy was measured) the energy chart.
            against = "energy per inference" if png.stem.endswith("-energy") else "p50 latency"
            lines += [f"![{score.header} against {against}, {model}]({png.name})", ""]
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
    """Cases by status; those whose baseline could not be compared are counted apart as well."""
    cases = [r for doc in documents for r in doc.cases]
    counts = {s: sum(r.status == s for r in cases) for s in ("passed", "failed", "error", "crashed")}
    generated = sorted({str(doc.meta.get("generated", "")) for doc in documents} - {""})
    tail = f"; generated {generated[-1]}" if generated else ""
    passed, failed, errors = counts["passed"], counts["failed"], counts["error"]
    incomparable = sum(is_incomparable(r.verdict("regression")) for r in cases)
    apart = f"; {incomparable} incomparable with their baseline" if incomparable else ""
    crashed = f", {counts['crashed']} crashed" if counts["crashed"] else ""
    return f"{len(cases)} cases: {passed} passed, {failed} failed, {errors} errors{crashed}{apart}{tail}."


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
    lines += _run_notes(documents)
    lines += _failures_section(documents)
    if len(documents) > 1:
        lines += [
            "## Best per runner",
            "",
            *markdown_table(BEST_COLUMNS, best_per_runner_rows(documents)),
            "",
        ]
    lines += _comparison_section(documents)
    lines += _profile_section(documents)
    lines += _model_sections(documents, plots or {})
    lines += [legend(), ""]
    lines += _energy_section(documents)
    return lines + _environment_section(documents) + _drift_section(documents)


BEST_COLUMNS = ("model", "runner", "threads", "fastest passing", "p50 ms", "most accurate", "Pareto frontier")


def legend() -> str:
    """The line under the model tables: what speedup, Δ, **yes** and ~ mean."""
    return (
        f"speedup is over {reference_words()} at the same batch size and runner; Δ is the case's metric "
        "minus the FP32 reference's; **yes** marks the Pareto frontier (no other case of the model is both "
        "faster and better on its metric, in that metric's direction); ~ marks a p99 from too few samples."
    )


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
    results = [_with_profile_files(r, directory) for r in results]
    document = results_document(results, meta)
    write_json(directory / "results.json", document)
    meta = {k: v for k, v in document.items() if k != "cases"}
    return [
        directory / "results.json",
        *render(directory, [ResultsDocument(meta, list(results))], plots=_can_plot()),
    ]


def _with_profile_files(result: CaseResult, directory: Path) -> CaseResult:
    """The result with its profiler's files copied under ``directory/profiles/<case id>/`` and
    named relative to the report (they were written into this run's artifact cache)."""
    files = (result.profile or {}).get("files") or []
    if not files or not any(Path(f).is_absolute() for f in files):
        return result
    target = directory / "profiles" / result.case_id
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in files:
        source = Path(name)
        if source.is_file():
            shutil.copyfile(source, target / source.name)
            copied.append((target / source.name).relative_to(directory).as_posix())
    return dataclasses.replace(result, profile={**(result.profile or {}), "files": copied})


def _can_plot() -> bool:
    """Plots need matplotlib (the ``report`` extra); without it the report still has its tables."""
    return importlib.util.find_spec("matplotlib") is not None
