"""The result of one case: plain data, built from raw samples, serialisable to stable JSON."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from perfgate.gates import Verdict
from perfgate.stats import LatencyStats

RESULTS_SCHEMA_VERSION = 1
"""Version of ``results.json`` (docs/results-schema.md); bump it when a field changes meaning."""

# jsonio writes non-finite floats as these strings (JSON has no NaN or Infinity).
_NON_FINITE = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "infinity": math.inf,
    "-infinity": -math.inf,
}


# A case that did not run to a verdict: an error in a step (a timeout included), or a crash of the
# process that ran it (--perf-isolate, pytest-xdist).
UNFINISHED = ("error", "crashed")


class ResultsError(RuntimeError):
    """A results file cannot be read; the message names the file and says why."""


@dataclass
class DeviceTiming:
    """The device side of a GPU case's timed rounds (``perfgate.cuda_timing.record_device_timing``)."""

    device_time: dict[str, float]  # p50/p90/p95/p99/mean of the device times in ms, and rounds
    host_p50_ms: float  # the host p50 of the same rounds
    device_share: float  # device p50 over host p50
    gpu_bound_by: str  # "device", "launch overhead" or "copies"
    gpu_remedy: str | None  # what to change; None when device-bound


@dataclass
class Measurement:
    """perfgate's own facts about how a case was measured, apart from the backend's settings.

    On disk they sit flat in the case's ``settings``, each under its field's name (a
    :class:`DeviceTiming` under its own fields' names), as they always have: results.json and the
    baselines read unchanged. A fact that is ``None`` is not stored.
    """

    warmup_rounds: int | None = None  # untimed calls before the last session's timed rounds
    batches_per_run: int | None = None  # batches one timed call runs (OpenVINO's async queue)
    copies_timed: bool | None = None  # host-device copies inside the timed region (CUDA backends)
    reference_workload_p50_us: float | None = None  # the reference workload's p50, timed next to it
    concurrent_runs: list[dict[str, Any]] | None = None  # other perfgate runs seen while it was timed
    op_counts: dict[str, int] | None = None  # what the lowering runs in: quantized_ops, float_ops
    calibration_source: str | None = None  # the data a quantization calibrated on
    device_timing: DeviceTiming | None = None  # GPU cases: the device time of the timed rounds

    @property
    def batches_per_call(self) -> int:
        """Batches in one timed call: ``batches_per_run``, or one."""
        return int(self.batches_per_run or 1)

    def to_settings(self) -> dict[str, Any]:
        """The facts as the keys of a case's stored ``settings``."""
        stored = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "device_timing" and getattr(self, f.name) is not None
        }
        return {**stored, **(asdict(self.device_timing) if self.device_timing else {})}

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> tuple[Measurement, dict[str, Any]]:
        """The facts in stored ``settings``, and the rest (the backend's own settings).

        A key that holds ``null``, or a device timing with a key missing, stays in the rest, so
        that writing the case again gives back the same keys.
        """
        rest = dict(settings)
        names = [f.name for f in fields(cls) if f.name != "device_timing"]
        facts = {name: rest.pop(name) for name in names if rest.get(name) is not None}
        device_keys = [f.name for f in fields(DeviceTiming)]
        if all(key in rest for key in device_keys):
            facts["device_timing"] = DeviceTiming(**{key: rest.pop(key) for key in device_keys})
        return cls(**facts), rest


@dataclass
class CaseResult:
    """Everything measured for one case; times in seconds unless the field says otherwise."""

    case_id: str
    model: str
    technique: str
    backend: str
    batch_size: int
    device: str
    runner: str
    nodeid: str = ""
    # What the model is (perfgate.model_kinds): which backend its speedup is over. Results written
    # before it was stored read as "torch".
    model_kind: str = "torch"
    status: str = "passed"  # passed | failed | error | crashed (see UNFINISHED)
    build_s: float | None = None
    build_cached: bool | None = None
    load_s: float | None = None
    first_inference_s: float | None = None
    artifact_bytes: int | None = None
    peak_rss_mb: float | None = None
    # The backend's own settings (threads, providers, versions, ...); perfgate's own facts are in
    # ``measurement``, stored inside ``settings`` on disk.
    settings: dict[str, Any] = field(default_factory=dict)
    measurement: Measurement = field(default_factory=Measurement)
    accuracy: dict[str, Any] | None = None
    latency: LatencyStats | None = None
    samples_s: list[float] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    # Every measurement session of the case in this run, in order: a summary
    # (perfgate.sessions.SessionSummary) plus ``kept`` (whether ``samples_s`` and the latency stand
    # on it; a first reading its confirmation overturned is not) and its thinned ``samples_s``.
    sessions: list[dict[str, Any]] = field(default_factory=list)
    # The later session this case waits for: "repeat" or "confirmation"; None when it is done.
    pending: str | None = None
    error: str | None = None
    # What the terminal leaves out: the full traceback of an error, the log tail of a crash.
    details: str | None = None
    # Where the case's time went, when it was profiled (perfgate.profiling): its trigger
    # ("failure", "request", "refresh"), the profiler, the calls, ``operators_us`` (us per call of
    # its slowest operators) and the profiler's ``files``; or ``unavailable`` with the reason.
    profile: dict[str, Any] | None = None
    # Energy per inference (perfgate.energy): measured by a counter (``source`` nvml or rapl) in
    # its own loop after timing, or ``source`` "unavailable" with the ``reason``.
    energy: dict[str, Any] | None = None

    @classmethod
    def for_case(cls, case: Any, runner: str, nodeid: str) -> CaseResult:
        """An empty result for ``case`` (a ``perfgate.matrix.Case``), filled in as the case runs."""
        return cls(
            case_id=case.id,
            model=case.model.name,
            technique=case.technique,
            backend=case.backend,
            batch_size=case.batch_size,
            device=case.device,
            runner=runner,
            nodeid=nodeid,
            model_kind=case.model.kind,
        )

    @property
    def accuracy_passed(self) -> bool:
        return self.accuracy is not None and not any(
            v.failed for v in self.verdicts if v.gate != "regression"
        )

    def verdict(self, gate: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.gate == gate), None)

    def stored_settings(self) -> dict[str, Any]:
        """``settings`` as results.json and the baselines store them: with perfgate's facts."""
        return {**self.settings, **self.measurement.to_settings()}

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        del result["measurement"]
        result["settings"] = copy.deepcopy(self.stored_settings())
        result["latency"] = self.latency.to_dict() if self.latency else None
        result["verdicts"] = [v.to_dict() for v in self.verdicts]
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        data = dict(data)
        latency = data.pop("latency", None)
        verdicts = data.pop("verdicts", [])
        data["measurement"], data["settings"] = Measurement.from_settings(data.get("settings") or {})
        result = cls(**data)
        if latency:
            latency = dict(latency)
            latency["low_confidence"] = tuple(latency.get("low_confidence", ()))
            result.latency = LatencyStats(**latency)
        result.verdicts = [Verdict(**v) for v in verdicts]
        return result


def _restore_non_finite(value: Any) -> Any:
    """Undo jsonio's spelling of NaN and Infinity inside numeric sections."""
    if isinstance(value, str):
        return _NON_FINITE.get(value.lower(), value)
    if isinstance(value, dict):
        return {k: _restore_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_non_finite(v) for v in value]
    return value


def case_from_json(data: dict[str, Any]) -> CaseResult:
    """A case as stored in ``results.json``, with NaN and Infinity restored in its figures."""
    data = dict(data)
    for key in ("latency", "accuracy", "verdicts"):
        if data.get(key) is not None:
            data[key] = _restore_non_finite(data[key])
    return CaseResult.from_dict(data)


@dataclass
class ResultsDocument:
    """One ``results.json``: the runner's metadata and its cases.

    :param meta: everything but the cases (runner, machine, drift, generated, ...).
    :param cases: the case results, sorted by id.
    :param path: where it was read from, to name it in messages; ``None`` if built in memory.
    """

    meta: dict[str, Any]
    cases: list[CaseResult]
    path: Path | None = None

    @property
    def runner(self) -> str:
        return str(self.meta.get("runner") or "?")

    @property
    def drift(self) -> list[Any]:
        """Environment drift entries, if the run that wrote the file recorded any."""
        drift = self.meta.get("drift")
        return list(drift) if isinstance(drift, list) else []


def load_results(path: Path) -> ResultsDocument:
    """Read and validate a ``results.json`` written by ``--perf-report``.

    :param path: the file to read.
    :raises ResultsError: the file is missing, not JSON, of another schema version, or malformed;
        the message names the file.
    """
    path = Path(path)
    if path.name.endswith(".jsonl"):
        return load_journal(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"results file {path} is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ResultsError(
            f"{path} is not a perfgate results file (no schema_version); write one with --perf-report"
        )
    version = data["schema_version"]
    if version != RESULTS_SCHEMA_VERSION:
        raise ResultsError(
            f"results file {path} has schema version {version!r}, "
            f"this perfgate reads {RESULTS_SCHEMA_VERSION}; "
            "re-render it with the perfgate version that wrote it, or re-run the suite"
        )
    if not isinstance(data.get("cases"), list):
        raise ResultsError(f"results file {path} has no 'cases' list")
    cases = []
    for index, raw in enumerate(data.pop("cases")):
        try:
            cases.append(case_from_json(raw))
        except (TypeError, ValueError, AttributeError) as exc:
            name = raw.get("case_id", f"#{index}") if isinstance(raw, dict) else f"#{index}"
            raise ResultsError(f"results file {path}: case {name} is malformed ({exc})") from None
    return ResultsDocument(meta=data, cases=cases, path=path)


def load_journal(path: Path) -> ResultsDocument:
    """The finished cases of a run journal (``<cache>/runs/*.jsonl``): a run that died still renders.

    :raises ResultsError: the file is missing or holds no run.
    """
    from perfgate.journal import finished_results, read_events

    try:
        events = read_events(path)
    except OSError as exc:
        raise ResultsError(f"journal {path} cannot be read ({exc})") from None
    header = events[0] if events and events[0].get("event") == "run" else None
    if header is None:
        raise ResultsError(f"{path} is not a perfgate run journal (no run header)")
    cases = []
    for raw in finished_results(path):
        try:
            cases.append(case_from_json(raw))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ResultsError(
                f"journal {path}: case {raw.get('case_id', '?')} is malformed ({exc})"
            ) from None
    meta = {"runner": header.get("runner"), "run_id": header.get("run_id"), "generated": header.get("started"), "journal": str(path)}  # fmt: skip
    return ResultsDocument(meta=meta, cases=sorted(cases, key=lambda c: c.case_id), path=path)
