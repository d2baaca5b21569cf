"""The declarative matrix file: models, techniques, backends, batch sizes, thresholds, profiles.

One case is generated per model x technique x backend x batch size that can exist; a combination
that cannot (a backend without the technique's lowering, a technique on the wrong device, one a
model excludes with ``[models.X] backends`` / ``exclude``) is never generated, and the reason is
kept in :attr:`Matrix.excluded` for listing.

:func:`load_matrix` validates the whole file before anything runs: every key, type and range
(the policies' and the techniques' own rules, perfgate/validation.py), every name against its
registry, every ``module:function`` path by importing it, and that the file generates a case at
all. Each error is a :class:`MatrixError` naming the file, the table and key, the bad value and
the valid ones.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from perfgate.backends import BACKENDS
from perfgate.calibration import Calibration
from perfgate.gates import AccuracyPolicy, RegressionPolicy
from perfgate.model_kinds import MODEL_KINDS, TORCH
from perfgate.registry import UnknownEntryError
from perfgate.techniques import TECHNIQUES
from perfgate.timing import TimingPolicy
from perfgate.validation import Rule, SettingError, integer, number, show

TOP_LEVEL_KEYS = {
    "pythonpath", "batch_sizes", "timing", "accuracy", "regression", "threads",
    "models", "techniques", "backends", "overrides", "profiles", "history",
}  # fmt: skip
# [history]: where the history of runs lives (relative to the matrix file) and the history gate's rule.
HISTORY_RULES: dict[str, Rule] = {
    "path": Rule(
        "a path to a SQLite file, relative to the matrix file", lambda v: isinstance(v, str) and v != ""
    ),
    "window": integer(1, hint="the last this many accepted runs form the history"),
    "min_runs": integer(1, hint="fewer accepted runs than this judge nothing"),
    "max_score": number(0, low_open=True, hint="the robust z a run must exceed to fail"),
}
MODEL_KEYS = {
    "factory",
    "data",
    "metric",
    "markers",
    "batch_sizes",
    "accuracy",
    "regression",
    "timing",
    "options",
    "description",
    "metric_direction",
    "export_tolerance",
    "calibrate_on_eval",
    "backends",
    "exclude",
    "exclude_reason",
    "kind",
}
EXPORT_TOLERANCE_KEYS = {"atol", "rtol"}
METRIC_DIRECTIONS = ("higher", "lower")
# ``load_matrix(path, ALL_PROFILES)``: every case of the file, whatever profile a run selects.
ALL_PROFILES = "*"
TECHNIQUE_KEYS = {"accuracy", "regression", "timing", "options", "batch_sizes", "markers"}
BACKEND_KEYS = {"threads", "markers"}
OVERRIDE_KEYS = {"match", "accuracy", "regression", "timing", "reason"}
THREAD_KEYS = {"intra_op", "inter_op"}
PROFILE_KEYS = {"models", "techniques", "backends", "batch_sizes", "description"}
# The tables a layer of thresholds may hold, and the policy each one sets.
POLICIES: dict[str, type[Any]] = {
    "accuracy": AccuracyPolicy,
    "regression": RegressionPolicy,
    "timing": TimingPolicy,
}
THREAD_RULE = integer(1, hint="threads of the runtime's pool")
DEFAULT_SOURCE = "perfgate's default"
GLOBAL_LAYER = "the top level's [accuracy]/[regression]/[timing]"


class MatrixError(ValueError):
    """The matrix file is invalid; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str
    data: str
    metric: str | None
    markers: tuple[str, ...]
    options: dict[str, Any]
    metric_direction: str = "higher"
    export_tolerance: dict[str, float] = field(default_factory=dict)
    calibrate_on_eval: bool = False
    # ``[models.X] backends``: the only backends (fnmatch patterns) the model runs on; None for all.
    backends: tuple[str, ...] | None = None
    # ``[models.X] exclude``: backend or technique names (fnmatch patterns) the model never runs on.
    exclude: tuple[str, ...] = ()
    exclude_reason: str | None = None
    # What the factory returns (perfgate.model_kinds): a torch module, or a classical estimator.
    kind: str = TORCH

    def excludes(self, technique: str, backend: str) -> str | None:
        """Why this model never runs ``technique`` on ``backend``, or ``None`` when it does."""
        why = f": {self.exclude_reason}" if self.exclude_reason else ""
        if self.backends is not None and not any(fnmatch.fnmatchcase(backend, p) for p in self.backends):
            only = ", ".join(self.backends)
            return f"model {self.name} runs only on {only} ([models.{self.name}] backends){why}"
        for pattern in self.exclude:
            if fnmatch.fnmatchcase(backend, pattern) or fnmatch.fnmatchcase(technique, pattern):
                name = backend if fnmatch.fnmatchcase(backend, pattern) else technique
                return f"model {self.name} excludes {name} ([models.{self.name}] exclude){why}"
        return None


@dataclass(frozen=True)
class Case:
    """One model x technique x backend x batch size, with everything its gates need."""

    id: str
    model: ModelSpec
    technique: str
    backend: str
    batch_size: int
    device: str
    markers: tuple[str, ...]
    accuracy: AccuracyPolicy
    regression: RegressionPolicy
    timing: TimingPolicy
    technique_options: dict[str, Any]
    threads: dict[str, int | None]
    # The technique's ``calibration`` option, parsed when the file loaded; ``None`` for a lowering
    # that does not calibrate. Backends read it from the build request, never from the options.
    calibration: Calibration | None = None


@dataclass(frozen=True)
class Excluded:
    """A combination that is never generated, and why."""

    combination: str
    reason: str


@dataclass
class Matrix:
    path: Path
    raw: dict[str, Any]
    models: dict[str, ModelSpec]
    cases: list[Case] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    # [history], checked; its path resolved against the matrix file's folder.
    history: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path, message: str) -> NoReturn:
    raise MatrixError(f"{path}: {message}")


def _check_keys(where: str, table: Any, allowed: set[str], path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise MatrixError(f"{path}: {where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise MatrixError(f"{path}: {where} has unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return table


def _list(where: str, value: Any, kind: type, path: Path) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise MatrixError(f"{path}: {where} must be a list of {kind.__name__}, got {value!r}")
    return value


def _tables(where: str, value: Any, path: Path, example: str) -> dict[str, Any]:
    """A top-level group of named tables (``[models.NAME]``...), checked to be one."""
    if not isinstance(value, dict):
        _fail(path, f"{where} = {show(value)}: declare named tables instead, e.g. {example}")
    return value


def _string(where: str, value: Any, path: Path) -> str:
    if not isinstance(value, str):
        _fail(path, f"{where} = {show(value)}: must be a string")
    return value


def _batch_sizes(where: str, value: Any, path: Path) -> list[int]:
    """A non-empty list of distinct integers >= 1; ``where`` is the key as the message names it."""
    problem = None
    if not isinstance(value, list):
        problem = "not a list"
    elif not value:
        problem = "the list is empty"
    else:
        for size in value:
            if isinstance(size, bool) or not isinstance(size, int):
                problem = f"{show(size)} is not an integer"
            elif size < 1:
                problem = f"{show(size)} is not >= 1"
            elif value.count(size) > 1:
                problem = f"{size} is listed twice"
            if problem:
                break
    if problem:
        _fail(
            path,
            f"{where} = {show(value)}: {problem}; batch_sizes must be a list of integers >= 1 "
            "(non-empty, no repeats), e.g. [1, 8, 32]",
        )
    return value


def _markers(where: str, value: Any, path: Path) -> list[str]:
    """A list of pytest marker names: identifiers not starting with ``_`` (``-m`` selects them)."""
    if not isinstance(value, list):
        _fail(path, f'{where} = {show(value)}: must be a list of marker names, e.g. ["slow"]')
    for marker in value:
        if not (isinstance(marker, str) and marker.isidentifier() and not marker.startswith("_")):
            _fail(
                path,
                f"{where} = {show(value)}: {show(marker)} is not a marker name; markers are "
                'identifiers (letters, digits, "_", not starting with "_" or a digit), e.g. ["slow"]',
            )
    return value


def _setting(where: str, rule: Rule, key: str, value: Any, path: Path) -> Any:
    try:
        rule.check(key, value)
    except SettingError as exc:
        _fail(path, f"{where} {exc}")
    return value


def _threads(where: str, table: Any, path: Path) -> dict[str, int]:
    table = _check_keys(where, table, THREAD_KEYS, path)
    for key, value in table.items():
        _setting(where, THREAD_RULE, key, value, path)
    return table


def _policy_tables(where: str | None, table: dict[str, Any], path: Path) -> None:
    """Check the accuracy, regression and timing tables of one layer, naming the key at fault.

    :param where: the layer's table (``[models.m]``), or ``None`` for the top level's own tables.
    """
    for kind, policy in POLICIES.items():
        if kind not in table:
            continue
        label = f"[{kind}]" if where is None else f"{where} {kind}"
        if not isinstance(table[kind], dict):
            _fail(path, f"{label} = {show(table[kind])}: must be a table of {kind} settings")
        try:
            policy().merged(table[kind])
        except SettingError as exc:
            _fail(path, f"[{kind}] {exc}" if where is None else f"{where} {kind}.{exc}")


def _import_problem(target: str, path: Path) -> str | None:
    """Why ``"module:attribute"`` does not import to a callable, with the fix; ``None`` when it does."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module may raise anything at import
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
            entries = ", ".join(show(e) for e in _pythonpath_entries(path)) or "none"
            fix = (
                f"check the module's name, or put the folder that holds it on the matrix's pythonpath "
                f"(entries are relative to {path.parent}; now: {entries})"
            )
        else:
            fix = f"module {module_name!r} itself fails to import: fix it, or install what it needs"
        return f"importing it fails with {last}; {fix}"
    if not hasattr(module, attribute):
        public = [n for n in dir(module) if not n.startswith("_")]
        close = difflib.get_close_matches(attribute, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = getattr(module, "__file__", None) or module_name
        return f"module {module_name!r} ({where}) has no attribute {attribute!r}{hint}"
    obj = getattr(module, attribute)
    if not callable(obj):
        return f"{target} is a {type(obj).__name__}, not a function: name a function"
    return None


def _importable(where: str, target: str, path: Path) -> None:
    problem = _import_problem(target, path)
    if problem:
        _fail(path, f"{where} = {show(target)}: {problem}")


def _pythonpath_entries(path: Path) -> list[str]:
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("pythonpath", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return entries if isinstance(entries, list) else []


def load_matrix(path: Path, profile: str | None = None) -> Matrix:
    """Read and validate a matrix file and generate its cases.

    :param path: the TOML file.
    :param profile: a ``[profiles.NAME]`` to restrict the cases to; ``None`` for the ``default``
        profile if the file has one, else every case; :data:`ALL_PROFILES` for every case.
    :raises MatrixError: anything in the file is invalid, or it generates no case.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MatrixError(
            f"{path}: matrix file not found (set --perf-matrix or the perf_matrix ini option)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{path}: not valid TOML: {exc}") from None
    _check_keys("the top level", raw, TOP_LEVEL_KEYS, path)
    for entry in _list("pythonpath", raw.get("pythonpath", []), str, path):
        resolved = (path.parent / entry).resolve()
        if not resolved.is_dir():
            _fail(
                path,
                f"pythonpath entry {show(entry)} is {resolved}, which is not a folder (entries are relative to the matrix file)",
            )
        if str(resolved) not in sys.path:
            sys.path.insert(0, str(resolved))
    tables = _tables("models", raw.get("models", {}), path, '[models.my_model] factory = "my_models:build"')
    models = {name: _model_spec(name, table, path) for name, table in tables.items()}
    if not models:
        raise MatrixError(f"{path}: no [models.NAME] table; declare at least one model")
    matrix = Matrix(path=path, raw=raw, models=models, history=_history(raw.get("history", {}), path))
    _generate(matrix, profile)
    return matrix


def _history(table: Any, path: Path) -> dict[str, Any]:
    """The [history] table, each value checked; ``path`` made absolute."""
    table = _check_keys("[history]", table, set(HISTORY_RULES), path)
    for key, value in table.items():
        try:
            HISTORY_RULES[key].check(key, value)
        except SettingError as exc:
            _fail(path, f"[history] {exc}")
    if "path" in table:
        table = {**table, "path": (path.parent / table["path"]).resolve()}
    return table


def _model_spec(name: str, table: Any, path: Path) -> ModelSpec:
    where = f"[models.{name}]"
    table = _check_keys(where, table, MODEL_KEYS, path)
    for key in ("factory", "data"):
        if not isinstance(table.get(key), str) or ":" not in table[key]:
            raise MatrixError(f'{path}: [models.{name}] needs {key} = "package.module:function"')
        _importable(f"{where} {key}", table[key], path)
    metric = table.get("metric")
    if metric is not None:
        _metric(where, metric, path)
    kind = table.get("kind", TORCH)
    if kind not in MODEL_KINDS:
        kinds = "; ".join(f'"{k}" ({v.returns})' for k, v in MODEL_KINDS.items())
        _fail(path, f"{where} kind = {show(kind)}: the factory's kind of model is one of {kinds}")
    from perfgate.accuracy import METRIC_DIRECTIONS as KNOWN_DIRECTIONS

    known = KNOWN_DIRECTIONS.get(metric) if isinstance(metric, str) else None
    direction = table.get("metric_direction", known or "higher")
    if direction not in METRIC_DIRECTIONS:
        raise MatrixError(
            f'{path}: [models.{name}] metric_direction = {direction!r}; use "higher" (accuracy, R²) '
            'or "lower" (a loss or an error such as MSE)'
        )
    if known is not None and direction != known:
        _fail(
            path,
            f'{where} metric_direction = "{direction}" contradicts metric {metric}, for which {known} is '
            "better: remove metric_direction (a registered metric knows its direction)",
        )
    tolerance = _check_keys(
        f"[models.{name}] export_tolerance", table.get("export_tolerance", {}), EXPORT_TOLERANCE_KEYS, path
    )
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < float("inf")
        for v in tolerance.values()
    ):
        raise MatrixError(
            f"{path}: [models.{name}] export_tolerance = {show(tolerance)}: needs atol and rtol finite numbers >= 0 "
            "(the ONNX export's tolerance is atol + rtol x the output scale)"
        )
    if not isinstance(table.get("calibrate_on_eval", False), bool):
        raise MatrixError(
            f"{path}: [models.{name}] calibrate_on_eval = {show(table['calibrate_on_eval'])}: must be true or false"
        )
    if not isinstance(table.get("options", {}), dict):
        _fail(
            path,
            f"{where} options = {show(table['options'])}: must be a table (passed to the factory as ctx.options)",
        )
    if "description" in table:
        _string(f"{where} description", table["description"], path)
    if "batch_sizes" in table:
        _batch_sizes(f"{where} batch_sizes", table["batch_sizes"], path)
    _policy_tables(where, table, path)
    backends = None
    if "backends" in table:
        backends = tuple(
            _patterns(f"{where} backends", table["backends"], {"backend": BACKENDS.names()}, path)
        )
    exclude: tuple[str, ...] = ()
    if "exclude" in table:
        universe = {"backend": BACKENDS.names(), "technique": TECHNIQUES.names()}
        exclude = tuple(_patterns(f"{where} exclude", table["exclude"], universe, path))
    reason = table.get("exclude_reason")
    if reason is not None:
        _string(f"{where} exclude_reason", reason, path)
        if backends is None and not exclude:
            _fail(
                path,
                f"{where} exclude_reason is set, but neither backends nor exclude excludes anything: add one, or remove it",
            )
    return ModelSpec(
        name=name,
        factory=table["factory"],
        data=table["data"],
        metric=metric,
        markers=tuple(_markers(f"[models.{name}] markers", table.get("markers", []), path)),
        options=dict(table.get("options", {})),
        metric_direction=direction,
        export_tolerance={k: float(v) for k, v in tolerance.items()},
        calibrate_on_eval=table.get("calibrate_on_eval", False),
        backends=backends,
        exclude=exclude,
        exclude_reason=reason,
        kind=kind,
    )


def _metric(where: str, metric: Any, path: Path) -> None:
    """A registered metric's name, or a ``"package.module:function"`` path that imports."""
    from perfgate.accuracy import METRICS

    if isinstance(metric, str) and ":" in metric:
        _importable(f"{where} metric", metric, path)
    elif not isinstance(metric, str) or metric not in METRICS:
        _fail(
            path,
            f"{where} metric = {show(metric)}: not a registered metric ({', '.join(METRICS.names())}) "
            'nor a "package.module:function" path to your own (outputs, labels) -> float',
        )


def _patterns(where: str, value: Any, universe: dict[str, list[str]], path: Path) -> list[str]:
    """Names or fnmatch patterns, each matching at least one registered name of ``universe``'s axes."""
    kinds = " or ".join(universe)
    names = [n for axis in universe.values() for n in axis]
    if not isinstance(value, list) or not value:
        _fail(
            path,
            f'{where} = {show(value)}: must be a non-empty list of {kinds} names (fnmatch patterns allowed), e.g. ["torch_cpu"]',
        )
    for pattern in value:
        if not isinstance(pattern, str) or not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            valid = "; ".join(f"{axis}s: {', '.join(axis_names)}" for axis, axis_names in universe.items())
            _fail(
                path, f"{where} = {show(value)}: {show(pattern)} names no registered {kinds}; valid: {valid}"
            )
    return value


def _profiles(raw: dict[str, Any], declared: dict[str, list[str]], path: Path) -> dict[str, dict[str, Any]]:
    """Every ``[profiles.NAME]``, checked whether it is selected or not."""
    profiles = _tables("profiles", raw.get("profiles", {}), path, '[profiles.smoke] backends = ["torch_cpu"]')
    for name, table in profiles.items():
        where = f"[profiles.{name}]"
        _check_keys(where, table, PROFILE_KEYS, path)
        for axis, names in declared.items():
            if axis not in table:
                continue
            value = table[axis]
            if not isinstance(value, list) or not value:
                _fail(
                    path,
                    f"{where} {axis} = {show(value)}: must be a non-empty list of [{axis}.NAME] names of this file",
                )
            for entry in value:
                if entry not in names:
                    _fail(
                        path,
                        f"{where} {axis} lists {show(entry)}, which is not a [{axis}.NAME] of this file; "
                        f"declared: {', '.join(names) or 'none'}",
                    )
        if "batch_sizes" in table:
            _batch_sizes(f"{where} batch_sizes", table["batch_sizes"], path)
        if "description" in table:
            _string(f"{where} description", table["description"], path)
    return profiles


def _resolve(where: str, registry: Any, name: str, path: Path) -> Any:
    try:
        return registry.get(name)
    except UnknownEntryError as exc:
        raise MatrixError(f"{path}: {where}: {exc}") from None


def _merge_options(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The technique's defaults under the matrix's options; a nested table (calibration) merges key by key.

    ``calibration = { size = 64 }`` on int8_static_entropy keeps the entropy method.
    """
    merged = dict(defaults)
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class _TechniqueEntry:
    technique: Any
    table: dict[str, Any]
    options: dict[str, Any]
    calibration: Calibration | None


def _technique(name: str, table: Any, path: Path) -> _TechniqueEntry:
    """A ``[techniques.NAME]`` table: keys, registry, options (keys, types, ranges, imports), batch sizes."""
    where = f"[techniques.{name}]"
    table = _check_keys(where, table, TECHNIQUE_KEYS, path)
    technique = _resolve(where, TECHNIQUES, name, path)
    if "batch_sizes" in table:
        _batch_sizes(f"{where} batch_sizes", table["batch_sizes"], path)
    _markers(f"{where} markers", table.get("markers", []), path)
    _policy_tables(where, table, path)
    options = table.get("options", {})
    if not isinstance(options, dict):
        _fail(path, f"{where} options = {show(options)}: must be a table, e.g. options = {{ amount = 0.5 }}")
    merged = _merge_options(technique.default_options, options)
    try:
        technique.check_options(options)
        technique.check_merged_options(merged)
        calibration = technique.calibration(merged)  # the defaults too: a technique's own typo
    except SettingError as exc:
        _fail(path, f"{where} options.{exc}")
    for key, rule in (technique.option_rules() or {}).items():
        if rule.imports and isinstance(merged.get(key), str):
            _importable(f"{where} options.{key}", merged[key], path)
    return _TechniqueEntry(technique, table, merged, calibration)


def _policies(
    matrix: Matrix, case_id: str, layers: list[tuple[str, dict[str, Any]]]
) -> tuple[AccuracyPolicy, RegressionPolicy, TimingPolicy]:
    """Apply each layer's accuracy, regression and timing tables, lowest precedence first.

    The file's tables were checked key by key already; what is left to check here is the
    technique's own defaults and the timing settings that contradict each other once merged.
    """
    accuracy, regression, timing = AccuracyPolicy(), RegressionPolicy(), TimingPolicy()
    source: dict[str, str] = {}
    for where, layer in layers:
        try:
            accuracy = accuracy.merged(layer.get("accuracy", {}))
            regression = regression.merged(layer.get("regression", {}))
            timing = timing.merged(layer.get("timing", {}))
        except (ValueError, TypeError) as exc:
            raise MatrixError(f"{matrix.path}: case {case_id}: {where}: {exc}") from None
        timing_table = "[timing]" if where == GLOBAL_LAYER else f"{where} timing"
        source.update(dict.fromkeys(layer.get("timing", {}), timing_table))
    for key, other, rule in timing.problems():
        raise MatrixError(
            f"{matrix.path}: case {case_id}: timing {key} = {show(getattr(timing, key))} "
            f"(from {source.get(key, DEFAULT_SOURCE)}) is below {other} = {show(getattr(timing, other))} "
            f"(from {source.get(other, DEFAULT_SOURCE)}): {rule}"
        )
    return accuracy, regression, timing


def _inherent_exclusion(
    technique: Any, backend: Any, tech_name: str, backend_name: str, kind: str
) -> str | None:
    """Why a technique cannot exist on a backend, or for a model of this ``kind``, at all; or ``None``."""
    if kind not in backend.model_kinds:
        return f"{backend_name} runs no {kind} model (it runs {_kinds(backend.model_kinds)})"
    if kind not in technique.model_kinds:
        return f"{tech_name} applies to no {kind} model (only to {_kinds(technique.model_kinds)})"
    if backend.device not in technique.devices:
        return f"{tech_name} does not exist on {backend.device}"
    if technique.runtimes is not None and backend.marker not in technique.runtimes:
        return f"{tech_name} means nothing to {backend_name}"
    if not backend.supports(technique.lowering):
        return f"{backend_name} has no {technique.lowering!r} lowering for {tech_name}"
    return None


def _kinds(kinds: frozenset[str]) -> str:
    return " and ".join(f"{kind} models" for kind in sorted(kinds))


def _generate(matrix: Matrix, profile_name: str | None) -> None:
    raw, path = matrix.raw, matrix.path
    example_technique = "[techniques.fp32]"
    techniques = {
        n: _technique(n, t, path)
        for n, t in _tables("techniques", raw.get("techniques", {}), path, example_technique).items()
    }
    backends: dict[str, tuple[Any, dict[str, Any], dict[str, int]]] = {}
    for name, table in _tables("backends", raw.get("backends", {}), path, "[backends.torch_cpu]").items():
        where = f"[backends.{name}]"
        table = _check_keys(where, table, BACKEND_KEYS, path)
        backend = _resolve(where, BACKENDS, name, path)
        _markers(f"{where} markers", table.get("markers", []), path)
        threads = _threads(f"[backends.{name}.threads]", table.get("threads", {}), path)
        backends[name] = (backend, table, threads)
    overrides = _overrides(raw, path)
    global_batches = _batch_sizes("batch_sizes", raw.get("batch_sizes", [1]), path)
    global_threads = _threads("[threads]", raw.get("threads", {}), path)
    _policy_tables(None, raw, path)
    declared = {"models": list(matrix.models), "techniques": list(techniques), "backends": list(backends)}
    profiles = _profiles(raw, declared, path)
    if not techniques:
        _fail(path, f"no [techniques.NAME] table: the matrix has nothing to run; add one, e.g. {example_technique} "
                    f"(registered: {', '.join(TECHNIQUES.names())})")  # fmt: skip
    if not backends:
        _fail(path, "no [backends.NAME] table: the matrix has nowhere to run; add one, e.g. [backends.torch_cpu] "
                    f"(registered: {', '.join(BACKENDS.names())})")  # fmt: skip
    if profile_name == ALL_PROFILES:
        selected_profile, profile = None, {}
    elif profile_name is None:
        selected_profile, profile = ("default", profiles["default"]) if "default" in profiles else (None, {})
    elif profile_name not in profiles:
        raise MatrixError(f"{path}: no [profiles.{profile_name}]; defined: {sorted(profiles) or 'none'}")
    else:
        selected_profile, profile = profile_name, profiles[profile_name]

    global_layer = {k: raw.get(k, {}) for k in POLICIES}
    wanted = {axis: set(profile[axis]) for axis in declared if axis in profile}
    every_id: list[str] = []  # every case of the file, whatever the profile
    reasons: list[str] = []  # why each combination of the file that is never generated is not
    per_model: dict[str, int] = dict.fromkeys(matrix.models, 0)
    matched: set[int] = set()
    for model in matrix.models.values():
        model_table = raw["models"][model.name]
        for tech_name, entry in techniques.items():
            technique, tech_table = entry.technique, entry.table
            for backend_name, (backend, backend_table, backend_threads) in backends.items():
                combo = f"{model.name}-{tech_name}-{backend_name}"
                selected = all(a not in wanted or n in wanted[a] for a, n in
                               (("models", model.name), ("techniques", tech_name), ("backends", backend_name)))  # fmt: skip
                reason = _inherent_exclusion(technique, backend, tech_name, backend_name, model.kind)
                reason = reason or model.excludes(tech_name, backend_name)
                if reason:
                    reasons.append(f"{combo}: {reason}")
                    if selected:
                        matrix.excluded.append(Excluded(combo, reason))
                    continue
                # A model's batch sizes win over a technique's: a classical model's regime is
                # throughput at batch sizes no torch model of the file shares.
                batches = model_table.get("batch_sizes") or tech_table.get("batch_sizes") or global_batches
                for batch in batches:
                    case_id = f"{combo}-b{batch}"
                    every_id.append(case_id)
                    per_model[model.name] += 1
                    layers = [(GLOBAL_LAYER, global_layer),
                              (f"technique {tech_name}'s defaults", {"accuracy": technique.accuracy}),
                              (f"[techniques.{tech_name}]", tech_table), (f"[models.{model.name}]", model_table)]  # fmt: skip
                    for i, (where, override) in enumerate(overrides):
                        if fnmatch.fnmatchcase(case_id, override["match"]):
                            matched.add(i)
                            layers.append((where, override))
                    accuracy, regression, timing = _policies(matrix, case_id, layers)
                    if not selected or ("batch_sizes" in profile and batch not in profile["batch_sizes"]):
                        continue
                    markers = ["cpu" if backend.device == "cpu" else "gpu", backend.marker]
                    kind_marker = MODEL_KINDS[model.kind].marker
                    markers += [*backend.extra_markers, *model.markers, *([kind_marker] if kind_marker else [])]
                    markers += [technique.family] if technique.family else []
                    markers += [*tech_table.get("markers", []), *backend_table.get("markers", [])]
                    matrix.cases.append(
                        Case(
                            id=case_id,
                            model=model,
                            technique=tech_name,
                            backend=backend_name,
                            batch_size=int(batch),
                            device=backend.device,
                            markers=tuple(dict.fromkeys(markers)),
                            accuracy=accuracy,
                            regression=regression,
                            timing=timing,
                            technique_options=dict(entry.options),
                            threads={**global_threads, **backend_threads},
                            calibration=entry.calibration,
                        )
                    )
    _check_generated(matrix, every_id, reasons, per_model, overrides, matched, selected_profile, profile)


def _overrides(raw: dict[str, Any], path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each ``[[overrides]]`` with the label its messages use: keys, ``match``, ``reason``, its tables."""
    value = raw.get("overrides", [])
    if not isinstance(value, list):
        _fail(
            path,
            "overrides must be an array of tables: write [[overrides]] (two brackets), once per override",
        )
    overrides = []
    for i, override in enumerate(value):
        where = f"[[overrides]] #{i + 1}"
        _check_keys(where, override, OVERRIDE_KEYS, path)
        match = override.get("match")
        if not isinstance(match, str) or not match:
            _fail(
                path,
                f'{where} needs match = "<glob on case ids>", e.g. "*-onnxruntime_cpu-*"; got {show(match)}',
            )
        if "reason" in override:
            _string(f"{where} reason", override["reason"], path)
        _policy_tables(where, override, path)
        overrides.append((f"{where} (match = {show(match)})", override))
    return overrides


def _check_generated(
    matrix: Matrix,
    every_id: list[str],
    reasons: list[str],
    per_model: dict[str, int],
    overrides: list[tuple[str, dict[str, Any]]],
    matched: set[int],
    profile_name: str | None,
    profile: dict[str, Any],
) -> None:
    """Refuse a file that generates nothing, a model excluded from everything, an override matching nothing."""
    path = matrix.path
    for name, count in per_model.items():
        spec = matrix.models[name]
        if count == 0 and (spec.backends is not None or spec.exclude):
            keys = " and ".join(k for k, v in (("backends", spec.backends), ("exclude", spec.exclude)) if v)
            _fail(path, f"[models.{name}] {keys} exclude every case of model {name}: nothing of it would run "
                        f"(backends of this file: {', '.join(matrix.raw.get('backends', {}))}); "
                        "list a backend it can run on, or remove the model")  # fmt: skip
    if not every_id:
        shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
        _fail(path, f"the matrix generates no case: every model x technique x backend combination is "
                    f"excluded ({shown}); add a backend that can run these techniques, or a technique it can run")  # fmt: skip
    for i, (where, _) in enumerate(overrides):
        if i not in matched:
            _fail(path, f"{where} matches no case of the matrix, so it changes nothing; case ids are "
                        f"<model>-<technique>-<backend>-b<batch>, e.g. {every_id[0]}: fix the pattern, or remove the override")  # fmt: skip
    if not matrix.cases:
        assert profile_name is not None  # without a profile, every case of the file is selected
        excluded = [f"{e.combination}: {e.reason}" for e in matrix.excluded[:3]]
        detail = (
            f"batch_sizes {show(profile['batch_sizes'])} matches no batch size its combinations run"
            if "batch_sizes" in profile and not excluded
            else "every combination it selects is excluded (" + "; ".join(excluded) + ")"
            if excluded
            else "its models, techniques and backends select no common combination"
        )
        _fail(path, f"[profiles.{profile_name}] selects no case of the {len(every_id)} the matrix generates: "
                    f"{detail}; widen its models, techniques, backends or batch_sizes")  # fmt: skip
