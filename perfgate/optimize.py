"""``perfgate optimize``: one model to a Pareto chart, and the matrix file that made it.

perfgate optimize my_models.py:wine_mlp --data my_models.py:wine --metric my_models.py:balanced_accuracy -o out

The plan is every technique and backend of the registries that applies to the model's kind on
this machine (a backend whose library or device is missing, a technique whose options perfgate
cannot fill for an arbitrary model, are left out with the reason). It is written as a commented
matrix file (``out/matrix.toml``) that a user can commit and gate CI with, and run through
:func:`perfgate.run`, the same pytest session as ``pytest perf``, so the report, the Pareto
chart and every gate are the ones CI gives. At the end comes the best configuration per
accuracy constraint and batch size, with its speedup over the FP32 reference.

This module is also the pytest plugin (``-p perfgate.optimize``) that draws the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from perfgate.results import UNFINISHED, CaseResult

# Techniques a plan includes only when --techniques names them: what they cost is out of
# proportion with a first look at a model.
OPT_IN = {
    "tvm_tuned": "tunes for minutes per case (64 measured trials each); name it in --techniques to include it",
}
# A quick run: enough rounds for a stable median of a small model, not a baseline's precision
# (perf/matrix.toml times 200 rounds and 0.5 s).
QUICK_TIMING = {
    "warmup_rounds": 5,
    "warmup_time_s": 0.05,
    "min_rounds": 30,
    "min_time_s": 0.2,
    "max_time_s": 5.0,
}
DEFAULT_BATCH_SIZES = (1, 32)
# Accuracy constraints of the summary: (name, allowed loss relative to the FP32 metric, ranked by).
CONSTRAINTS: tuple[tuple[str, float | None, str], ...] = (
    ("fastest overall", None, "latency"),
    ("fastest within 0.1%", 0.001, "latency"),
    ("fastest within 1%", 0.01, "latency"),
    ("smallest within 1%", 0.01, "size"),
)
PT_FACTORY = "perfgate.optimize:load_pt"
ONNX_FACTORY = "perfgate.optimize:load_onnx"


class OptimizeError(ValueError):
    """Bad input to ``perfgate optimize``; the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class LeftOut:
    """A technique or backend the plan leaves out, and why."""

    name: str
    reason: str


@dataclass
class Plan:
    """What ``perfgate optimize`` runs: one model, the techniques and backends that apply to it here."""

    model: str
    kind: str
    factory: str
    data: str
    metric: str | None
    metric_direction: str | None
    options: dict[str, Any]
    techniques: list[str]
    backends: list[str]
    batch_sizes: list[int]
    pythonpath: list[Path] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- the target, the data and the metric --------------------------------------------------


def parse_callable(text: str, what: str) -> tuple[str, Path | None]:
    """``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION`` as a ``module:function`` path, and the
    folder to put on the path for it (the file's folder; ``None`` for a module path).

    :param what: the option as messages name it (``--data``).
    :raises OptimizeError: not of either form, or the file does not exist.
    """
    module, sep, attribute = text.rpartition(":")
    if not sep or not module or not attribute.isidentifier():
        raise OptimizeError(
            f"{what} {text!r}: expected MODULE:FUNCTION (my_models:wine) or path/to/file.py:FUNCTION"
        )
    if module.endswith(".py") or "/" in module or os.sep in module:
        file = Path(module)
        if file.suffix != ".py":
            raise OptimizeError(f"{what} {text!r}: {file} is not a .py file")
        if not file.is_file():
            raise OptimizeError(f"{what} {text!r}: no such file {file.resolve()}")
        return f"{file.stem}:{attribute}", file.resolve().parent
    if not all(part.isidentifier() for part in module.split(".")):
        raise OptimizeError(f"{what} {text!r}: {module!r} is not a module name")
    return text, None


def module_folder(target: str, candidates: Sequence[Path]) -> Path | None:
    """The folder of ``candidates`` that holds ``target``'s top-level package, or ``None`` when it
    is installed (importable without a pythonpath entry)."""
    top = target.partition(":")[0].split(".")[0]
    for folder in candidates:
        if (folder / top).is_dir() or (folder / f"{top}.py").is_file():
            return folder.resolve()
    return None


def import_target(target: str, what: str) -> Any:
    """Import a ``module:function`` path, turning any failure into one line that names ``what``."""
    from perfgate.backends.base import error_line
    from perfgate.registry import import_object

    try:
        obj = import_object(target)
    except Exception as exc:  # a user's module may raise anything at import
        raise OptimizeError(f"{what} {target}: {error_line(exc)}") from None
    if not callable(obj):
        raise OptimizeError(f"{what} {target} is a {type(obj).__name__}, not a function")
    return obj


def load_pt(ctx: Any) -> Any:
    """The factory of ``perfgate optimize --model FILE.pt``: a whole torch module saved with
    ``torch.save(model, path)``, its path in ``[models.X] options.path``.

    Unpickling runs code from the file (``torch.load(weights_only=False)``): load only files you
    trust. The module's class must be importable (``--pythonpath``), as for any pickle.
    """
    import torch

    path = Path(ctx.options["path"])
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"{path} holds a {type(model).__name__}, not a torch.nn.Module: save the whole module "
            "(torch.save(model, path)); for a state_dict, write a factory that builds the module and loads it"
        )
    return model.eval()


def load_onnx(ctx: Any) -> Path:
    """The factory of ``perfgate optimize --model FILE.onnx``: the file's path (a ``kind = "onnx"``
    model: ONNX Runtime on the file is its reference), from ``[models.X] options.path``."""
    return Path(ctx.options["path"])


# ---- the plan -----------------------------------------------------------------------------


def split_names(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; ``None`` stays ``None`` (every name)."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,32"`` -> ``[1, 32]``: distinct integers >= 1."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptimizeError(
            f"--batch-sizes {text!r}: expected integers separated by commas, e.g. 1,32"
        ) from None
    if not sizes or any(size < 1 for size in sizes) or len(set(sizes)) != len(sizes):
        raise OptimizeError(f"--batch-sizes {text!r}: expected distinct integers >= 1, e.g. 1,32")
    return sizes


def _check_names(names: list[str] | None, registry: Any, option: str) -> None:
    unknown = [name for name in names or [] if name not in registry]
    if unknown:
        raise OptimizeError(
            f"{option}: unknown {registry.axis} {', '.join(unknown)}; registered: {', '.join(registry.names())}"
        )


def choose_backends(kind: str, wanted: list[str] | None) -> tuple[list[str], list[LeftOut], list[str]]:
    """The backends that run a model of ``kind`` here: each of ``wanted`` (default: every registered
    one) whose library and device are present, the kind's reference always among them.

    :returns: the backends, those left out with the reason, notes for the plan.
    :raises OptimizeError: an unknown name, or the reference backend cannot run here.
    """
    from perfgate.backends import BACKENDS, reference_backend

    _check_names(wanted, BACKENDS, "--backends")
    reference = reference_backend(kind)
    chosen, left_out, notes = [], [], []
    names = list(dict.fromkeys([reference, *(wanted if wanted is not None else BACKENDS.names())]))
    if wanted is not None and reference not in wanted:
        notes.append(f"{reference} added: every case is judged against fp32 on it")
    for name in names:
        backend = BACKENDS.get(name)
        if kind not in backend.model_kinds:
            left_out.append(LeftOut(name, f"runs no {kind} model"))
        elif (why := backend.missing()) is not None:
            if name == reference:
                raise OptimizeError(f"the reference backend cannot run here: {why}")
            left_out.append(LeftOut(name, why.removeprefix(f"{name}: ")))
        else:
            chosen.append(name)
    return chosen, left_out, notes


def choose_techniques(
    kind: str, backends: Sequence[str], wanted: list[str] | None
) -> tuple[list[str], list[LeftOut]]:
    """The techniques that apply to a model of ``kind`` on at least one of ``backends`` here, with
    options perfgate can fill for any model (distillation needs a student: left out).

    :raises OptimizeError: an unknown name.
    """
    from perfgate import hardware
    from perfgate.backends import BACKENDS
    from perfgate.matrix import _inherent_exclusion
    from perfgate.techniques import TECHNIQUES, reference_technique
    from perfgate.validation import SettingError

    _check_names(wanted, TECHNIQUES, "--techniques")
    machine = hardware.detect()
    reference = reference_technique()
    names = list(dict.fromkeys([reference, *(wanted if wanted is not None else TECHNIQUES.names())]))
    chosen, left_out = [], []
    for name in names:
        technique = TECHNIQUES.get(name)
        why: str | None = None
        if name in OPT_IN and wanted is None:
            why = OPT_IN[name]
        elif kind not in technique.model_kinds:
            why = f"applies to no {kind} model"
        else:
            try:
                technique.check_merged_options(technique.default_options)
            except SettingError as exc:
                why = f"options.{exc}; add it by hand in the matrix's [techniques.{name}]"
        if why is None:
            reasons = [
                _inherent_exclusion(technique, BACKENDS.get(b), name, b, kind)
                or technique.missing(machine, BACKENDS.get(b).device)
                for b in backends
            ]
            if all(reasons):
                why = f"no backend here runs it ({reasons[0]})" if len(set(reasons)) > 1 else str(reasons[0])
        if why is None:
            chosen.append(name)
        else:
            left_out.append(LeftOut(name, why))
    return chosen, left_out


def load_data(data: Any) -> Any:
    """Call the data loader once, as the run will.

    :raises OptimizeError: it fails, or returns something other than a ``perfgate.ModelData``.
    """
    from perfgate.backends.base import error_line
    from perfgate.data import ModelData

    try:
        loaded = data()
    except Exception as exc:  # a user's loader may raise anything
        raise OptimizeError(f"--data: calling it fails with {error_line(exc)}") from None
    if not isinstance(loaded, ModelData):
        raise OptimizeError(f"--data returned {type(loaded).__name__}, not perfgate.ModelData")
    return loaded


def detect_kind(factory: Any, data: Any, name: str, options: dict[str, Any], cache_dir: Path) -> str:
    """The model kind of what ``factory`` returns, by calling it once (what it trains or fits is
    cached, so the run that follows loads it).

    :param data: the loaded ``perfgate.ModelData``.
    :raises OptimizeError: the factory fails, or returns what no kind accepts.
    """
    from perfgate.backends.base import error_line
    from perfgate.cache import ArtifactCache
    from perfgate.model_kinds import MODEL_KINDS
    from perfgate.models import ModelContext

    ctx = ModelContext(name, data, ArtifactCache(cache_dir), options, _say)
    try:
        model = factory(ctx)
    except Exception as exc:  # a user's factory may raise anything
        raise OptimizeError(f"the model's factory fails with {error_line(exc)}") from None
    for kind in MODEL_KINDS.values():
        if kind.accepts(model):
            return kind.name
    kinds = "; ".join(f"{k.returns} (--kind {k.name})" for k in MODEL_KINDS.values())
    raise OptimizeError(f"the model's factory returned a {type(model).__name__}, which is none of: {kinds}")


def default_metric(data: Any) -> str | None:
    """``top1`` for integer labels, else none: the variants are then judged on fidelity to FP32 only."""
    import numpy as np

    labels = data.eval_labels
    return "top1" if labels is not None and np.issubdtype(np.asarray(labels).dtype, np.integer) else None


# ---- the matrix file ----------------------------------------------------------------------


def _toml(value: Any) -> str:
    """A TOML value: a string, number, bool, list or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _path_entry(folder: Path, directory: Path) -> str:
    """A pythonpath entry for the matrix in ``directory``: relative where the two share a folder
    below the root (they move together), else absolute."""
    if os.path.commonpath([folder, directory]) == os.path.abspath(os.sep):
        return folder.as_posix()
    return Path(os.path.relpath(folder, directory)).as_posix()


def grouped(items: Sequence[LeftOut]) -> list[tuple[str, str]]:
    """``(names, reason)``: the names left out for one reason, joined, in first-seen order."""
    by_reason: dict[str, list[str]] = {}
    for item in items:
        by_reason.setdefault(item.reason, []).append(item.name)
    return [(", ".join(names), reason) for reason, names in by_reason.items()]


def matrix_text(plan: Plan, directory: Path, command: str) -> str:
    """The matrix file of ``plan``, commented, with ``pythonpath`` relative to ``directory``."""
    pythonpath = [_path_entry(folder, directory.resolve()) for folder in plan.pythonpath]
    model: dict[str, Any] = {"factory": plan.factory, "data": plan.data}
    model |= {"metric": plan.metric} if plan.metric else {}
    model |= {"metric_direction": plan.metric_direction} if plan.metric_direction else {}
    model |= {"kind": plan.kind} if plan.kind != "torch" else {}
    model |= {"options": plan.options} if plan.options else {}
    lines = [
        f"# Written by: {command}",
        f"# Model {plan.model}: every technique and backend that applies to it on the machine that wrote it.",
        "# Run it again with perfgate.run('matrix.toml', report='DIR') in Python, or put it in your suite's",
        "# folder beside the four-line test module of README.md (pytest --perf-matrix this file) and gate CI",
        "# with --perf-refresh-baselines / --benchmark-compare.",
        "",
        f"pythonpath = {_toml(pythonpath)}   # relative to this file where it shares a folder with it",
        f"batch_sizes = {_toml(plan.batch_sizes)}",
        "",
        "[timing]   # a quick look; perf/matrix.toml times 200 rounds and 0.5 s per case for baselines",
        *(f"{key} = {_toml(value)}" for key, value in QUICK_TIMING.items()),
        "",
        "[accuracy]",
        "# A variant whose technique changed nothing, or whose artifact is not smaller than FP32 (INT8 scales",
        "# outweigh the weights of a small model), is flagged (!) instead of failed, so that it is still timed",
        "# and plotted. Remove this line to make such a variant fail, as a CI gate should.",
        "require_effect = false",
        "",
        "[threads]   # one thread per session, as the reference suite; threads_tuned shows what more buy",
        "intra_op = 1",
        "inter_op = 1",
        "",
        f"[models.{plan.model}]",
        *(f"{key} = {_toml(value)}" for key, value in model.items()),
        "",
    ]
    if plan.left_out:
        lines += ["# Left out on the machine that wrote this file:"]
        lines += [f"#   {names}: {reason}" for names, reason in grouped(plan.left_out)]
        lines += [""]
    lines += [f"[techniques.{name}]" for name in plan.techniques] + [""]
    lines += [f"[backends.{name}]" for name in plan.backends]
    return "\n".join(lines) + "\n"


# ---- the best configuration per constraint --------------------------------------------------


@dataclass(frozen=True)
class Best:
    """The best case of one batch size under one constraint; ``case`` is ``None`` when none qualifies."""

    batch_size: int
    constraint: str
    case: CaseResult | None
    speedup: float | None


def reference_value(result: CaseResult, score: Any) -> float | None:
    """The FP32 reference's score the case is judged against: its metric, or agreement 1.0."""
    if not result.accuracy:
        return None
    if not score.task_metric:
        return 1.0
    value = result.accuracy.get("reference_metric")
    return None if value is None else float(value)


def passed(result: CaseResult) -> bool:
    """Whether the case ran to the end and passed every gate."""
    return result.status == "passed" and not any(v.failed for v in result.verdicts)


def within(result: CaseResult, score: Any, tolerance: float) -> bool:
    """Whether the case passed its gates and its score is within ``tolerance`` (a fraction of the
    reference's score) of the FP32 reference, in the metric's direction (a gain always is)."""
    value, reference = score.value(result), reference_value(result, score)
    if not passed(result) or value is None or reference is None:
        return False
    slack = tolerance * abs(reference)
    return value >= reference - slack if score.higher_is_better else value <= reference + slack


def _ms(value: float) -> str:
    """Milliseconds with three significant digits, never in exponent form."""
    return f"{value:.{max(0, 2 - math.floor(math.log10(value)))}f}" if value > 0 else "0"


def _p50(result: CaseResult) -> float:
    return result.latency.p50_ms if result.latency else float("inf")


def best_configurations(cases: Sequence[CaseResult], reference_backend: str) -> list[Best]:
    """The best case per batch size under each of :data:`CONSTRAINTS`, with its speedup over fp32 on
    ``reference_backend`` at the same batch size. "Fastest overall" takes every timed case, its
    gates aside; the others only cases that passed their gates within the allowed loss.
    """
    from perfgate.pareto import model_score
    from perfgate.techniques import reference_technique

    score = model_score(cases)
    timed = [r for r in cases if r.latency is not None and r.status not in UNFINISHED]
    best = []
    for batch in sorted({r.batch_size for r in timed}):
        group = sorted((r for r in timed if r.batch_size == batch), key=lambda r: (_p50(r), r.case_id))
        ref = next(
            (r for r in group if r.technique == reference_technique() and r.backend == reference_backend),
            None,
        )
        for name, tolerance, rank in CONSTRAINTS:
            eligible = [r for r in group if tolerance is None or within(r, score, tolerance)]
            if rank == "size":
                eligible = sorted(
                    (r for r in eligible if r.artifact_bytes), key=lambda r: (r.artifact_bytes or 0, _p50(r))
                )
            pick = eligible[0] if eligible else None
            speedup = (
                ref.latency.p50_ms / pick.latency.p50_ms
                if ref and pick and ref.latency and pick.latency
                else None
            )
            best.append(Best(batch, name, pick, speedup))
    return best


def best_lines(cases: Sequence[CaseResult], reference_backend: str) -> list[str]:
    """The summary: per batch size, one line per constraint."""
    from perfgate.pareto import model_score
    from perfgate.techniques import reference_technique
    from perfgate.units import human_bytes

    score = model_score(cases)
    lines = [
        f"best configurations ({score.describe()}; within = passed its gates and kept its score within that "
        f"much of fp32's; speedup over {reference_technique()} on {reference_backend} at the same batch size):"
    ]
    batch = None
    found = best_configurations(cases, reference_backend)
    if not found:
        lines.append("  none: no case was timed (see why above)")
    for best in found:
        if best.batch_size != batch:
            batch = best.batch_size
            lines.append(f"  batch {batch}:")
        r = best.case
        if r is None or r.latency is None:
            lines.append(f"    {best.constraint + ':':<22} none")
            continue
        speedup = f"{best.speedup:.2f}x" if best.speedup else "-"
        value = score.value(r)
        shown = f"{score.header} {value:.4f}" if value is not None else "no score"
        delta = score.delta(r)
        reference = reference_value(r, score)
        if delta is not None and reference:
            shown += f" ({delta / abs(reference):+.2%})"
        shown += "" if passed(r) else ", FAILED a gate"
        size = f", {human_bytes(r.artifact_bytes)}" if r.artifact_bytes else ""
        lines.append(
            f"    {best.constraint + ':':<22} {r.technique} on {r.backend}, {speedup}  "
            f"(p50 {_ms(r.latency.p50_ms)} ms{size}, {shown})"
        )
    return lines


# ---- the progress bar (a pytest plugin: -p perfgate.optimize) -------------------------------


@dataclass
class _Progress:
    config: Any = None
    total: int = 0
    done: int = 0
    current: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> the skip line's reason
    stream: IO[str] = sys.stderr


_PROGRESS: _Progress | None = None
BAR_WIDTH = 24


def _case_id(nodeid: str) -> str:
    return nodeid.rpartition("[")[2].rstrip("]") or nodeid


def _emit(text: str, final: bool) -> None:
    """Write a progress line past pytest's output capturing: in place on a terminal, else one per case."""
    state = _PROGRESS
    if state is None:
        return
    capture = state.config.pluginmanager.get_plugin("capturemanager") if state.config else None
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if state.stream.isatty():
            state.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final:
            state.stream.write(text + "\n")
        state.stream.flush()


def _bar_line(state: _Progress, text: str) -> str:
    filled = round(BAR_WIDTH * state.done / state.total) if state.total else 0
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(state.counts.items()))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {state.done}/{state.total} {text}" + (
        f"  ({counts})" if counts else ""
    )


def pytest_configure(config: Any) -> None:
    if _PROGRESS is not None:
        _PROGRESS.config = config


def pytest_collection_finish(session: Any) -> None:
    if _PROGRESS is not None:
        _PROGRESS.total = sum("perf_case" in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    if _PROGRESS is not None:
        _PROGRESS.current = _case_id(nodeid)
        _emit(_bar_line(_PROGRESS, f"{_PROGRESS.current}: running"), final=False)


def pytest_runtest_logreport(report: Any) -> None:
    state = _PROGRESS
    if state is None:
        return
    case = _case_id(report.nodeid)
    if report.failed or (report.skipped and case not in state.outcome):
        state.outcome[case] = "failed" if report.failed else "skipped"
    if report.skipped and isinstance(report.longrepr, tuple):
        state.skipped[case] = str(report.longrepr[2]).removeprefix("Skipped: ").removeprefix(f"{case}: ")
    if report.when == "teardown":
        outcome = state.outcome.setdefault(case, "passed")
        state.done += 1
        state.counts[outcome] = state.counts.get(outcome, 0) + 1
        _emit(_bar_line(state, f"{case}: {outcome}"), final=True)


@contextlib.contextmanager
def progress_bar(stream: IO[str]) -> Iterator[_Progress]:
    """Draw the bar on ``stream`` for the run inside (``perfgate.run(..., pytest_args=["-p", "perfgate.optimize"])``);
    the state it yields keeps each case's outcome and the reasons of the skipped ones."""
    global _PROGRESS
    _PROGRESS = _Progress(stream=stream)
    try:
        yield _PROGRESS
    finally:
        _PROGRESS = None


# ---- the command --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the command line asks for (perfgate.cli parses it)."""

    target: str | None
    model_file: Path | None
    data: str
    output: Path
    metric: str | None = None
    metric_direction: str | None = None
    kind: str | None = None
    backends: list[str] | None = None
    techniques: list[str] | None = None
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    pythonpath: list[Path] = field(default_factory=list)
    command: str = "perfgate optimize"  # as the matrix file's first line quotes it


def _say(line: str) -> None:
    print(f"perfgate: {line}", file=sys.stderr, flush=True)


def cache_dir(root: Path) -> Path:
    """The artifact cache the run uses (``PERFGATE_CACHE``, else ``.perfgate_cache`` in the root)."""
    return Path(os.environ.get("PERFGATE_CACHE") or root / ".perfgate_cache")


def make_plan(request: Request, root: Path) -> Plan:
    """Resolve the target, data and metric, detect the model's kind, and choose what applies here.

    :raises OptimizeError: anything that cannot be run, in one line.
    """
    from perfgate.backends import BACKENDS
    from perfgate.techniques import TECHNIQUES

    _check_names(request.backends, BACKENDS, "--backends")  # before anything is imported or trained
    _check_names(request.techniques, TECHNIQUES, "--techniques")
    extra = [folder.resolve() for folder in request.pythonpath]
    for folder in extra:
        if not folder.is_dir():
            raise OptimizeError(f"--pythonpath {folder}: not a folder")
    options: dict[str, Any] = {}
    folders: list[Path | None] = []
    if request.model_file is not None:
        name, factory = _model_file(request.model_file, options)
    else:
        assert request.target is not None
        factory, target_folder = parse_callable(request.target, "TARGET")
        name = factory.partition(":")[2]
        folders.append(target_folder)
    data, data_folder = parse_callable(request.data, "--data")
    folders.append(data_folder)
    metric = request.metric
    if metric is not None and ":" in metric:
        metric, metric_folder = parse_callable(metric, "--metric")
        folders.append(metric_folder)
    candidates = [*extra, Path.cwd()]
    for target in (factory, data, metric):
        if target and ":" in target and target not in (PT_FACTORY, ONNX_FACTORY):
            folders.append(module_folder(target, candidates))
    pythonpath = list(dict.fromkeys([*extra, *(f for f in folders if f is not None)]))
    for entry in reversed(pythonpath):
        if str(entry) not in sys.path:
            sys.path.insert(0, str(entry))
    build, load = import_target(factory, "TARGET"), import_target(data, "--data")
    if metric is not None and ":" in metric:
        import_target(metric, "--metric")
    elif metric is not None:
        from perfgate.accuracy import METRICS

        if metric not in METRICS:
            raise OptimizeError(
                f"--metric {metric!r}: not a registered metric ({', '.join(METRICS.names())}) nor MODULE:FUNCTION"
            )
    model = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    loaded = load_data(load)
    kind = request.kind or detect_kind(build, loaded, model, options, cache_dir(root))
    notes = []
    if metric is None:
        metric = default_metric(loaded)
        notes.append(f"metric {metric or 'none (fidelity to fp32 only)'} by default: --metric to choose")
    backends, left_backends, more = choose_backends(kind, request.backends)
    techniques, left_techniques = choose_techniques(kind, backends, request.techniques)
    return Plan(
        model=model,
        kind=kind,
        factory=factory,
        data=data,
        metric=metric,
        metric_direction=request.metric_direction,
        options=options,
        techniques=techniques,
        backends=backends,
        batch_sizes=list(request.batch_sizes),
        pythonpath=pythonpath,
        left_out=[*left_techniques, *left_backends],
        notes=[*notes, *more],
    )


def _model_file(path: Path, options: dict[str, Any]) -> tuple[str, str]:
    """``--model FILE``: its model name and factory; fills ``options``."""
    if not path.is_file():
        raise OptimizeError(f"--model {path}: no such file")
    if path.suffix == ".onnx":
        options["path"] = str(path.resolve())
        return path.stem, ONNX_FACTORY
    if path.suffix not in (".pt", ".pth"):
        raise OptimizeError(
            f"--model {path}: expected an .onnx file, or a .pt/.pth file saved with torch.save(model, path)"
        )
    options["path"] = str(path.resolve())
    return path.stem, PT_FACTORY


def plan_lines(plan: Plan, cases: int, matrix: Path) -> list[str]:
    """The plan as printed before the run."""
    metric = plan.metric or "none: fidelity to fp32 only"
    lines = [
        f"perfgate optimize: model {plan.model} ({plan.kind}, factory {plan.factory}), data {plan.data}, metric {metric}",
        f"  techniques ({len(plan.techniques)}): {', '.join(plan.techniques)}",
        f"  backends ({len(plan.backends)}): {', '.join(plan.backends)}",
        f"  batch sizes: {', '.join(map(str, plan.batch_sizes))}",
        *(f"  note: {note}" for note in plan.notes),
    ]
    if plan.left_out:
        lines.append("  left out:")
        lines += [f"    {names}: {reason}" for names, reason in grouped(plan.left_out)]
    lines.append(f"  {cases} cases (technique x backend x batch size that can exist): {matrix}")
    return lines


def optimize(request: Request, root: Path | None = None, stream: IO[str] | None = None) -> int:
    """Plan, write the matrix, run it with its gates and report, print the best configurations.

    :param root: where the artifact cache lives (the current directory by default, as ``pytest perf``).
    :param stream: where the plan, progress and summary go (stderr for the progress, this for the rest).
    :returns: 0 when every case passed its gates, 1 when some failed (the report lists them).
    :raises OptimizeError: bad input, or the run could not start.
    """
    from perfgate.api import RunError, run
    from perfgate.backends import reference_backend
    from perfgate.matrix import ALL_PROFILES, MatrixError, load_matrix
    from perfgate.report import terminal_lines

    out = stream or sys.stdout
    root = (root or Path.cwd()).resolve()
    plan = make_plan(request, root)
    directory = request.output
    if directory.exists() and not directory.is_dir():
        raise OptimizeError(f"-o {directory}: exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    matrix = directory / "matrix.toml"
    matrix.write_text(matrix_text(plan, directory, request.command), encoding="utf-8")
    try:
        cases = load_matrix(matrix, ALL_PROFILES).cases
    except MatrixError as exc:
        raise OptimizeError(str(exc)) from None
    print("\n".join(plan_lines(plan, len(cases), matrix)), file=out, flush=True)
    log = directory / "pytest.log"
    started = time.monotonic()
    try:
        with (
            open(log, "w", encoding="utf-8") as held,
            contextlib.redirect_stdout(held),
            progress_bar(sys.stderr) as bar,
        ):
            results = run(
                matrix, report=directory, root=root, pytest_args=["-p", "perfgate.optimize", "-rfEs"]
            )
    except RunError as exc:
        raise OptimizeError(f"{exc} (pytest's output: {log})") from None
    print(
        "\n".join(summary_lines(results.cases, bar.skipped, time.monotonic() - started, log)),
        file=out,
    )
    print("\n".join(terminal_lines(results.cases)), file=out)
    print("", file=out)
    print("\n".join(best_lines(results.cases, reference_backend(plan.kind))), file=out)
    written = sorted(p.name for p in directory.iterdir() if p.suffix in (".png", ".md", ".json", ".toml"))
    print(f"written into {directory}: {', '.join(written)}", file=out)
    return results.exit_code and 1


def summary_lines(
    cases: Sequence[CaseResult], skipped: dict[str, str], seconds: float, log: Path
) -> list[str]:
    """How the run went: counts, then the failures and the skips grouped by what went wrong (a
    technique that fails the same way on every backend and batch size is one line)."""
    counts: dict[str, int] = {"skipped": len(skipped)} if skipped else {}
    for r in cases:
        counts[r.status] = counts.get(r.status, 0) + 1
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [
        f"perfgate optimize: {len(cases) + len(skipped)} cases in {seconds:.0f} s: {shown} (pytest's output: {log})"
    ]
    groups: dict[tuple[str, str], list[str]] = {}
    for r in cases:
        if not passed(r):
            failed = [v for v in r.verdicts if v.failed]
            what = f"{r.status} {failed[0].gate}" if failed and not r.error else r.status
            why = r.error or (failed[0].message if failed else r.status)
            groups.setdefault((what, why.splitlines()[0].removeprefix(f"{r.case_id}: ")), []).append(
                r.case_id
            )
    for case, reason in skipped.items():
        groups.setdefault(("skipped", reason), []).append(case)
    for (what, why), ids in groups.items():
        more = f" (and {len(ids) - 1} more like it)" if len(ids) > 1 else ""
        lines.append(f"  {what}: {ids[0]}{more}: {why}")
    return lines
