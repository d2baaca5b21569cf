"""Baselines: one JSON file per runner, in pytest-benchmark's format plus a ``perfgate`` section.

``baselines/<runner>/0001_baseline.json`` is read by perfgate itself, by case id, and by nothing
else: pytest-benchmark's storage (``--benchmark-save``, ``--benchmark-autosave``, its own compare)
stays in its own folder, so a saved run can never become what the gate compares with, and a test
file that moves or is renamed keeps its baselines. Every value is validated when the file is read.
A refresh rewrites the file atomically, replacing only the cases that ran and passed their
accuracy gates.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock

from perfgate.cache import stable_hash
from perfgate.jsonio import write_json
from perfgate.reference_workload import REFERENCE_NAME
from perfgate.results import UNFINISHED, CaseResult, Measurement
from perfgate.sessions import SessionSummary, thin

SCHEMA_VERSION = 1
BASELINE_FILE = "0001_baseline.json"
# Evenly thinned beyond this (shared out among the case's sessions), to keep files reviewable.
MAX_STORED_SAMPLES = 2000
# Fewer samples than this say nothing about a case's spread: such an entry is refused on load.
MIN_BASELINE_SAMPLES = 5
# The reference workload's p50, timed next to each case, sits in the case's settings under this key
# (Measurement.reference_workload_p50_us on a result).
REFERENCE_SETTING = "reference_workload_p50_us"
# Verdicts whose cases --perf-refresh-changed rewrites.
CHANGED_STATUSES = ("fail", "improved")


class BaselineError(RuntimeError):
    """A baseline file cannot be used; the message names it, the case, and how to fix it."""


@dataclass(frozen=True)
class BaselineCase:
    """What the baseline holds for one case, validated.

    :param case_id: the case, e.g. ``digits_resnet-fp32-onnxruntime_cpu-b1``.
    :param samples_s: the stored raw samples (positive, finite), in seconds.
    :param reference_us: the reference workload's p50 timed next to it, if any.
    :param accuracy: the case's accuracy pass when it was stored (task metric and fidelity).
    :param settings: the case's settings when it was stored (threads, providers, ...).
    :param hardware: the machine snapshot it was measured on (``Hardware.to_dict()``), or ``{}``.
    :param sessions: its measurement sessions (the repeats of the refresh); a file written before
        sessions were stored holds one, summarised from its samples.
    """

    case_id: str
    samples_s: list[float]
    reference_us: float | None
    accuracy: dict[str, Any] | None
    settings: dict[str, Any]
    hardware: dict[str, Any] = field(default_factory=dict)
    sessions: tuple[SessionSummary, ...] = ()
    # Its operators' time per call when it was stored (perfgate.profiling), or None: what a
    # later regression's profile is compared with.
    profile: dict[str, Any] | None = None

    @property
    def metric(self) -> float | None:
        value = (self.accuracy or {}).get("metric")
        return None if value is None else float(value)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples_s) * 1e3


@dataclass(frozen=True)
class Baseline:
    """A runner's validated baseline file: the raw document and its cases by id."""

    path: Path
    document: dict[str, Any]
    cases: dict[str, BaselineCase]


def baseline_path(root: Path, runner: str) -> Path:
    return Path(root) / runner / BASELINE_FILE


def _fix(path: Path) -> str:
    return (
        f"restore it from version control (git checkout -- {path}), or remove the broken case from "
        "its 'benchmarks' list and its 'perfgate.cases' table (or delete the file) and run "
        "--perf-refresh-baselines"
    )


def read_baseline(path: Path) -> dict[str, Any] | None:
    """Load and validate a baseline file; ``None`` if it does not exist.

    :raises BaselineError: the file is not JSON, of another schema, or holds a value the gate
        cannot use; the message names the file, the case and the fix.
    """
    baseline = load_baseline(path)
    return None if baseline is None else baseline.document


def load_baseline(path: Path) -> Baseline | None:
    """:func:`read_baseline`, with the validated cases indexed by case id."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"baseline {path} is not valid JSON ({exc}); {_fix(path)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise BaselineError(f"baseline {path} has no 'benchmarks' list; {_fix(path)}")
    section = data.get("perfgate")
    version = section.get("schema_version") if isinstance(section, dict) else None
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"baseline {path} has schema version {version!r}, this perfgate reads {SCHEMA_VERSION}; "
            f"upgrade perfgate, or {_fix(path)}"
        )
    return Baseline(path, data, _validated_cases(path, data))


def case_of(entry: Any) -> str | None:
    """The perfgate case id a ``benchmarks[]`` entry belongs to, or ``None``."""
    if not isinstance(entry, dict):
        return None
    extra, params = _table(entry.get("extra_info")), _table(entry.get("params"))
    case = extra.get("perfgate_case") or params.get("perf_case") or entry.get("param")
    return case if isinstance(case, str) and case else None


def _table(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _validated_cases(path: Path, data: dict[str, Any]) -> dict[str, BaselineCase]:
    cases = data["perfgate"].get("cases", {})
    if not isinstance(cases, dict):
        raise BaselineError(f"baseline {path}: 'perfgate.cases' is not a table; {_fix(path)}")
    entries: dict[str, list[dict[str, Any]]] = {}
    for index, entry in enumerate(data["benchmarks"]):
        case_id = case_of(entry)
        if case_id is None:
            raise BaselineError(
                f"baseline {path}: benchmarks entry #{index + 1} names no perfgate case "
                f"(extra_info.perfgate_case); {_fix(path)}"
            )
        if case_id not in cases:
            raise BaselineError(
                f"baseline {path}: case {case_id} has samples but no entry in 'perfgate.cases'; {_fix(path)}"
            )
        entries.setdefault(case_id, []).append(entry)
    environments = data["perfgate"].get("environments") or {}
    default_hardware = (data.get("machine_info") or {}).get("perfgate") or {}
    return {
        case_id: _validated_case(
            path, case_id, case, entries.get(case_id, []), environments, default_hardware
        )
        for case_id, case in cases.items()
    }


def _problem(path: Path, case_id: str, text: str) -> BaselineError:
    return BaselineError(f"baseline {path}: case {case_id}: {text}; {_fix(path)}")


def _validated_case(
    path: Path,
    case_id: str,
    case: Any,
    entries: list[dict[str, Any]],
    environments: dict[str, Any],
    default_hardware: dict[str, Any],
) -> BaselineCase:
    if not isinstance(case, dict):
        raise _problem(path, case_id, "its 'perfgate.cases' entry is not a table")
    entry = _current_entry(path, case_id, case, entries)
    samples = _samples(path, case_id, entry)
    settings = _table(case.get("settings"))
    reference = Measurement.from_settings(settings)[0].reference_workload_p50_us
    if reference is not None and not _positive(reference):
        raise _problem(path, case_id, f"{REFERENCE_SETTING} is {reference!r}, not a positive number")
    accuracy = case.get("accuracy")
    metric = accuracy.get("metric") if isinstance(accuracy, dict) else None
    if metric is not None and not _finite(metric):
        raise _problem(path, case_id, f"the stored task metric is {metric!r}, not a finite number")
    environment = case.get("environment")
    hardware = default_hardware if environment is None else environments.get(environment, default_hardware)
    sessions = _sessions(path, case_id, case.get("sessions"), samples, reference)
    profile = case.get("profile")
    if profile is not None and not _valid_profile(profile):
        raise _problem(path, case_id, "'profile' is not a table whose operators_us maps operator names to times >= 0")
    return BaselineCase(
        case_id=case_id,
        samples_s=samples,
        reference_us=None if reference is None else float(reference),
        accuracy=accuracy if isinstance(accuracy, dict) else None,
        settings=settings,
        hardware=hardware if isinstance(hardware, dict) else {},
        sessions=sessions,
        profile=profile,
    )


def _valid_profile(profile: Any) -> bool:
    operators = profile.get("operators_us") if isinstance(profile, dict) else None
    return isinstance(operators, dict) and all(
        isinstance(name, str) and _finite(us) and us >= 0 for name, us in operators.items()
    )


def _sessions(
    path: Path, case_id: str, stored: Any, samples: list[float], reference: Any
) -> tuple[SessionSummary, ...]:
    """The case's sessions, validated; one summarised from the samples for a file without them."""
    if stored is None:
        return (SessionSummary.from_samples(samples, "first", reference),)
    if not isinstance(stored, list) or not stored:
        raise _problem(path, case_id, "'sessions' is not a non-empty list of session summaries")
    sessions = []
    for index, entry in enumerate(stored, 1):
        if not isinstance(entry, dict) or not all(
            _positive(entry.get(k)) for k in ("p50_s", "p90_s", "p99_s")
        ):
            raise _problem(path, case_id, f"session {index} has no positive, finite p50_s, p90_s and p99_s")  # fmt: skip
        if entry.get("reference_us") is not None and not _positive(entry["reference_us"]):
            raise _problem(path, case_id, f"session {index}: reference_us is {entry['reference_us']!r}, not a positive number")  # fmt: skip
        sessions.append(SessionSummary.from_dict(entry))
    return tuple(sessions)


def _current_entry(path: Path, case_id: str, case: dict[str, Any], entries: list[dict[str, Any]]) -> Any:
    """The case's samples entry; a file written before entries were keyed by case id may hold
    stale copies under an old test path, and the one the case points at is the current one."""
    if not entries:
        raise _problem(path, case_id, "it has no samples entry in 'benchmarks'")
    pointed = [e for e in entries if e.get("fullname") == case.get("fullname")]
    if len(pointed) == 1 or len(entries) == 1:
        return (pointed or entries)[0]
    raise _problem(path, case_id, f"it has {len(entries)} samples entries in 'benchmarks' and no way to tell the current one")  # fmt: skip


def _samples(path: Path, case_id: str, entry: dict[str, Any]) -> list[float]:
    stats = entry.get("stats")
    if not isinstance(stats, dict) or not isinstance(stats.get("data"), list):
        raise _problem(path, case_id, "its benchmarks entry has no 'stats.data' list of raw samples")
    data = stats["data"]
    if len(data) < MIN_BASELINE_SAMPLES:
        raise _problem(path, case_id, f"{len(data)} raw samples, fewer than the {MIN_BASELINE_SAMPLES} a comparison needs")  # fmt: skip
    bad = next((x for x in data if not _positive(x)), None)
    if bad is not None:
        raise _problem(path, case_id, f"a raw sample is {bad!r}: every sample must be a positive, finite duration")  # fmt: skip
    median = stats.get("median")
    if not _positive(median):
        raise _problem(path, case_id, f"stats.median is {median!r}, not a positive, finite duration")
    return [float(x) for x in data]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def stored_sessions(result: CaseResult) -> tuple[list[float], list[dict[str, Any]]]:
    """The samples a baseline stores for ``result`` and its sessions' summaries.

    Each kept session keeps an even share of :data:`MAX_STORED_SAMPLES`, thinned evenly across
    it; its summary names its slice of the stored samples (``samples``: ``[start, end)``).
    """
    kept = [s for s in result.sessions if s.get("kept", True)]
    if not kept:  # a result from before sessions (or built by hand): one session of its samples
        kept = [{**SessionSummary.from_samples(result.samples_s).to_dict(), "samples_s": result.samples_s}]
    share = MAX_STORED_SAMPLES // len(kept)
    data: list[float] = []
    summaries = []
    for session in kept:
        part = thin(session["samples_s"], share)
        summary = {k: v for k, v in session.items() if k not in ("samples_s", "kept")}
        summaries.append({**summary, "samples": [len(data), len(data) + len(part)]})
        data += part
    return data, summaries


def benchmark_entry(result: CaseResult) -> dict[str, Any]:
    """A pytest-benchmark ``benchmarks[]`` entry for one case, from its raw samples.

    Its statistics are those of the stored (thinned, rounded) samples, so that the file agrees
    with itself: the median a reader sees is the median of the data beside it.
    """
    from pytest_benchmark.stats import Stats

    stored, _ = stored_sessions(result)
    stats = Stats()
    for sample in stored:
        stats.update(sample)
    body = stats.as_dict()
    body.update(data=stored, iterations=1)
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
    return statistics.median(entry["stats"]["data"]) * 1e3 if entry else None


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
    refreshes of one runner both land (the later merges into the earlier's file). Entries are
    keyed by case id: a case whose test file moved replaces its old entry.

    :param path: the runner's baseline file.
    :param runner: the runner id, recorded in the file.
    :param results: the cases that ran; only these are replaced.
    :param machine_info: pytest-benchmark's machine info, with perfgate's hardware under ``perfgate``.
    :param commit_info: pytest-benchmark's commit info.
    :param prune: case ids to remove (cases no longer in the matrix), or ``None``.
    """
    with lock_for(path):
        return _refresh_locked(path, runner, results, machine_info, commit_info, prune)


def _stored(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The current file's benchmarks and cases by case id, and its environments (all empty if none)."""
    baseline = load_baseline(path)
    if baseline is None:
        return {}, {}, {}
    section = baseline.document["perfgate"]
    cases = dict(section.get("cases", {}))
    benches = {}
    for case_id, case in cases.items():
        entries = [b for b in baseline.document["benchmarks"] if case_of(b) == case_id]
        benches[case_id] = _current_entry(path, case_id, case, entries)
    environments = dict(section.get("environments") or {})
    legacy = (baseline.document.get("machine_info") or {}).get("perfgate")
    for case in cases.values():  # a file from before per-case environments: keep what it said
        if "environment" not in case and legacy:
            case["environment"] = stable_hash(legacy)
            environments[case["environment"]] = legacy
    return benches, cases, environments


def _refresh_locked(
    path: Path,
    runner: str,
    results: list[CaseResult],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
    prune: set[str] | None,
) -> list[Change]:
    benches, cases, environments = _stored(path)
    hardware = machine_info.get("perfgate") or {}
    environment = stable_hash(hardware)
    changes = []
    for result in sorted(results, key=lambda r: r.case_id):
        old = benches.get(result.case_id)
        concurrent = bool(result.measurement.concurrent_runs)
        if result.status in UNFINISHED or not result.samples_s or not result.accuracy_passed or concurrent:
            changes.append(Change(result.case_id, "kept-out", _p50_ms(old), None, _kept_out_reason(result)))
            continue
        benches[result.case_id] = benchmark_entry(result)
        cases[result.case_id] = {
            "fullname": benches[result.case_id]["fullname"],
            "accuracy": result.accuracy,
            "latency": result.latency.to_dict() if result.latency else None,
            "settings": result.stored_settings(),
            "sessions": stored_sessions(result)[1],
            "environment": environment,
            "samples_stored": len(benches[result.case_id]["stats"]["data"]),
            "samples_measured": len(result.samples_s),
        }
        if result.profile and result.profile.get("operators_us"):
            # The compact summary only: a trace file lives in this run's cache, not in review.
            cases[result.case_id]["profile"] = {
                k: result.profile[k] for k in ("source", "runs", "operators_us")
            }
        environments[environment] = hardware
        action = "replaced" if old else "added"
        changes.append(Change(result.case_id, action, _p50_ms(old), _p50_ms(benches[result.case_id])))
    for case_id in sorted(prune or ()):
        if cases.pop(case_id, None) is not None:
            changes.append(Change(case_id, "removed", _p50_ms(benches.pop(case_id, None)), None, "no longer in the matrix"))  # fmt: skip
    if any(c.action != "kept-out" for c in changes):
        write_json(path, _document(runner, benches, cases, environments, machine_info, commit_info))
    return changes


def _kept_out_reason(result: CaseResult) -> str:
    if result.status == "crashed":
        return "crashed its process"
    if result.measurement.concurrent_runs:
        return "was timed while another perfgate run was running on this machine"
    if result.accuracy is not None and not result.accuracy_passed:
        return "failed its accuracy gate"
    if result.accuracy is not None and not result.samples_s:
        return "has no timing samples (benchmarks disabled?)"
    return "did not run to the end"


def _document(
    runner: str,
    benches: dict[str, dict[str, Any]],
    cases: dict[str, Any],
    environments: dict[str, Any],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
) -> dict[str, Any]:
    import pytest_benchmark

    used = {case.get("environment") for case in cases.values()}
    return {
        "benchmarks": [benches[case_id] for case_id in sorted(benches)],
        "commit_info": commit_info,
        "datetime": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine_info": machine_info,
        "version": pytest_benchmark.__version__,
        "perfgate": {
            "schema_version": SCHEMA_VERSION,
            "runner": runner,
            "reference_workload": REFERENCE_NAME,
            "cases": dict(sorted(cases.items())),
            # The machine each case was measured on, by hash: a -k refresh on another machine
            # changes only its own cases' snapshot, never the others'.
            "environments": {k: v for k, v in sorted(environments.items()) if k in used},
        },
    }


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int) -> Baseline | None:
    return load_baseline(Path(path))


def cached_baseline(path: Path) -> Baseline | None:
    """:func:`load_baseline`, read once per version of the file (every case of a run asks)."""
    try:
        stat = Path(path).stat()
    except (FileNotFoundError, NotADirectoryError):  # no file (a folder in its place is the refresh's error)
        return None
    return _cached(str(path), stat.st_mtime_ns, stat.st_size)


def baseline_reference_us(baseline: Baseline | None, case_id: str) -> float | None:
    """The reference workload's p50 stored with ``case_id``, if it was timed with today's kernel."""
    if baseline is None or baseline.document["perfgate"].get("reference_workload") != REFERENCE_NAME:
        return None
    case = baseline.cases.get(case_id)
    return case.reference_us if case else None
