"""Baselines: one JSON file per runner, in pytest-benchmark's format plus a ``perfgate`` section.

``baselines/<runner>/0001_baseline.json`` is what ``--benchmark-compare`` loads (perfgate points
pytest-benchmark's storage at the runner's folder). A refresh rewrites it atomically, replacing
only the cases that ran and passed their accuracy gates.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest_benchmark
from filelock import FileLock
from pytest_benchmark.stats import Stats

from perfgate.jsonio import write_json
from perfgate.reference_workload import REFERENCE_NAME
from perfgate.results import CaseResult

SCHEMA_VERSION = 1
BASELINE_FILE = "0001_baseline.json"
MAX_STORED_SAMPLES = (
    2000  # evenly thinned beyond this (the gate bootstraps at most 2000 a side), to keep files reviewable
)
# The reference workload's p50, timed next to each case, sits in the case's settings under this key.
REFERENCE_SETTING = "reference_workload_p50_us"
# Verdicts whose cases --perf-refresh-changed rewrites.
CHANGED_STATUSES = ("fail", "improved")


class BaselineError(RuntimeError):
    """A baseline file cannot be used; the message names it and says how to fix it."""


def baseline_path(root: Path, runner: str) -> Path:
    return Path(root) / runner / BASELINE_FILE


def read_baseline(path: Path) -> dict[str, Any] | None:
    """Load and validate a baseline file; ``None`` if it does not exist."""
    if not path.exists():
        return None
    fix = f"restore it from version control (git checkout -- {path}) or delete it and run --perf-refresh-baselines"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BaselineError(f"baseline {path} has no 'benchmarks' list; {fix}")
    version = data.get("perfgate", {}).get("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline {path} has schema version {version!r}, this perfgate reads {SCHEMA_VERSION}; "
            f"upgrade perfgate, or {fix}"
        )
    return data


def thin(samples: list[float], limit: int = MAX_STORED_SAMPLES) -> list[float]:
    """At most ``limit`` samples, taken evenly across the run so drift within it is kept."""
    if len(samples) <= limit:
        return [round(s, 9) for s in samples]
    step = len(samples) / limit
    return [round(samples[int(i * step)], 9) for i in range(limit)]


def benchmark_entry(result: CaseResult) -> dict[str, Any]:
    """A pytest-benchmark ``benchmarks[]`` entry for one case, from its raw samples."""
    stats = Stats()
    for sample in result.samples_s:
        stats.update(sample)
    body = stats.as_dict()
    body.update(data=thin(result.samples_s), iterations=1)
    name = result.nodeid.rpartition("::")[2] or result.case_id
    return {
        "group": result.model,
        "name": name,
        "fullname": result.nodeid or result.case_id,
        "params": {"perf_case": result.case_id},
        "param": result.case_id,
        "extra_info": {"perfgate_case": result.case_id},
        "options": {"timer": "perf_counter", "min_rounds": len(result.samples_s)},
        "stats": body,
    }


@dataclass(frozen=True)
class Change:
    case_id: str
    action: str  # added | replaced | removed | kept-out
    old_p50_ms: float | None
    new_p50_ms: float | None
    reason: str = ""

    def line(self) -> str:
        old = f"{self.old_p50_ms:.4g} ms" if self.old_p50_ms is not None else "-"
        new = f"{self.new_p50_ms:.4g} ms" if self.new_p50_ms is not None else "-"
        tail = f" ({self.reason})" if self.reason else ""
        return f"{self.action:>9}  {self.case_id}  p50 {old} -> {new}{tail}"


def _p50_ms(entry: dict[str, Any] | None) -> float | None:
    return entry["stats"]["median"] * 1e3 if entry else None


def lock_for(path: Path) -> FileLock:
    """The lock that serialises read-modify-write of ``path`` across processes (xdist, two runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.parent / f".{path.name}.lock"))


def changed_only(results: list[CaseResult]) -> list[CaseResult]:
    """The results whose regression verdict says the baseline is out of date (regressed or improved)."""
    return [r for r in results if (v := r.verdict("regression")) is not None and v.status in CHANGED_STATUSES]


def refresh(
    path: Path,
    runner: str,
    results: list[CaseResult],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
    prune: set[str] | None = None,
) -> list[Change]:
    """Replace the baseline entries of ``results`` that passed their accuracy gates.

    The read, the merge and the atomic write happen under a file lock, so two concurrent
    refreshes of one runner both land (the later merges into the earlier's file).

    :param path: the runner's baseline file.
    :param runner: the runner id, recorded in the file.
    :param results: the cases that ran; only these are replaced.
    :param machine_info: pytest-benchmark's machine info, with perfgate's hardware under ``perfgate``.
    :param commit_info: pytest-benchmark's commit info.
    :param prune: case ids to remove (cases no longer in the matrix), or ``None``.
    """
    with lock_for(path):
        return _refresh_locked(path, runner, results, machine_info, commit_info, prune)


def _refresh_locked(
    path: Path,
    runner: str,
    results: list[CaseResult],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
    prune: set[str] | None,
) -> list[Change]:
    existing = read_baseline(path) or {"benchmarks": [], "perfgate": {"cases": {}}}
    benches = {b["fullname"]: b for b in existing["benchmarks"]}
    cases: dict[str, Any] = dict(existing["perfgate"].get("cases", {}))
    changes = []
    for result in sorted(results, key=lambda r: r.case_id):
        fullname = result.nodeid or result.case_id
        old = benches.get(fullname)
        if result.status == "error" or not result.samples_s or not result.accuracy_passed:
            why = "failed its accuracy gate" if result.accuracy is not None else "did not run to the end"
            if not result.samples_s and result.accuracy_passed:
                why = "has no timing samples (benchmarks disabled?)"
            changes.append(Change(result.case_id, "kept-out", _p50_ms(old), None, why))
            continue
        benches[fullname] = benchmark_entry(result)
        cases[result.case_id] = {
            "fullname": fullname,
            "accuracy": result.accuracy,
            "latency": result.latency.to_dict() if result.latency else None,
            "settings": result.settings,
            "samples_stored": len(benches[fullname]["stats"]["data"]),
            "samples_measured": len(result.samples_s),
        }
        changes.append(
            Change(result.case_id, "replaced" if old else "added", _p50_ms(old), _p50_ms(benches[fullname]))
        )
    for case_id in sorted(prune or ()):
        entry = cases.pop(case_id, None)
        if entry is not None:
            old = benches.pop(entry["fullname"], None)
            changes.append(Change(case_id, "removed", _p50_ms(old), None, "no longer in the matrix"))
    document = {
        "benchmarks": sorted(benches.values(), key=lambda b: b["fullname"]),
        "commit_info": commit_info,
        "datetime": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine_info": machine_info,
        "version": pytest_benchmark.__version__,
        "perfgate": {
            "schema_version": SCHEMA_VERSION,
            "runner": runner,
            "reference_workload": REFERENCE_NAME,
            "cases": dict(sorted(cases.items())),
        },
    }
    if any(c.action != "kept-out" for c in changes):
        write_json(path, document)
    return changes


def baseline_samples(compared_mapping: dict[Any, dict[str, Any]] | None, fullname: str) -> list[float] | None:
    """The raw samples pytest-benchmark loaded for ``fullname`` under ``--benchmark-compare``."""
    for benches in (compared_mapping or {}).values():
        bench = benches.get(fullname)
        if bench is not None:
            data = bench.get("stats", {}).get("data")
            if data:
                return [float(x) for x in data]
            median = bench.get("stats", {}).get("median")
            return [float(median)] if median else None
    return None


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    return read_baseline(Path(path))


def cached_baseline(path: Path) -> dict[str, Any] | None:
    """:func:`read_baseline`, read once per version of the file (every case of a run asks)."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return None
    return _cached(str(path), stat.st_mtime_ns, stat.st_size)


def baseline_reference_us(document: dict[str, Any] | None, case_id: str) -> float | None:
    """The reference workload's p50 stored with ``case_id``, if it was timed with today's kernel."""
    if not document or document.get("perfgate", {}).get("reference_workload") != REFERENCE_NAME:
        return None
    case = document["perfgate"].get("cases", {}).get(case_id) or {}
    value = (case.get("settings") or {}).get(REFERENCE_SETTING)
    return float(value) if value else None
