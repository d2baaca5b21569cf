"""The declarative matrix file: models, techniques, backends, batch sizes, thresholds, profiles.

One case is generated per model x technique x backend x batch size that can exist; a combination
that cannot (a backend without the technique's lowering, a technique on the wrong device) is
never generated, and the reason is kept for ``--perf-list``.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from perfgate.backends import BACKENDS
from perfgate.gates import AccuracyPolicy, RegressionPolicy
from perfgate.registry import UnknownEntryError
from perfgate.techniques import TECHNIQUES
from perfgate.timing import TimingPolicy

TOP_LEVEL_KEYS = {
    "pythonpath", "batch_sizes", "timing", "accuracy", "regression", "threads",
    "models", "techniques", "backends", "overrides", "profiles",
}  # fmt: skip
MODEL_KEYS = {
    "factory",
    "data",
    "metric",
    "markers",
    "batch_sizes",
    "accuracy",
    "regression",
    "options",
    "description",
    "metric_direction",
    "export_tolerance",
    "calibrate_on_eval",
}
EXPORT_TOLERANCE_KEYS = {"atol", "rtol"}
METRIC_DIRECTIONS = ("higher", "lower")
# ``load_matrix(path, ALL_PROFILES)``: every case of the file, whatever profile a run selects.
ALL_PROFILES = "*"
TECHNIQUE_KEYS = {"accuracy", "regression", "options", "batch_sizes", "markers"}
BACKEND_KEYS = {"threads", "markers"}
OVERRIDE_KEYS = {"match", "accuracy", "regression", "timing", "reason"}
THREAD_KEYS = {"intra_op", "inter_op"}
PROFILE_KEYS = {"models", "techniques", "backends", "batch_sizes", "description"}


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


def load_matrix(path: Path, profile: str | None = None) -> Matrix:
    """Read and validate a matrix file and generate its cases.

    :param path: the TOML file.
    :param profile: a ``[profiles.NAME]`` to restrict the cases to; ``None`` for the ``default``
        profile if the file has one, else every case; :data:`ALL_PROFILES` for every case.
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
        resolved = str((path.parent / entry).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
    models = {name: _model_spec(name, table, path) for name, table in raw.get("models", {}).items()}
    if not models:
        raise MatrixError(f"{path}: no [models.NAME] table; declare at least one model")
    matrix = Matrix(path=path, raw=raw, models=models)
    _generate(matrix, _profile(raw, profile, path))
    return matrix


def _model_spec(name: str, table: Any, path: Path) -> ModelSpec:
    table = _check_keys(f"[models.{name}]", table, MODEL_KEYS, path)
    for key in ("factory", "data"):
        if not isinstance(table.get(key), str) or ":" not in table[key]:
            raise MatrixError(f'{path}: [models.{name}] needs {key} = "package.module:function"')
    direction = table.get("metric_direction", "higher")
    if direction not in METRIC_DIRECTIONS:
        raise MatrixError(
            f'{path}: [models.{name}] metric_direction = {direction!r}; use "higher" (accuracy, R²) '
            'or "lower" (a loss or an error such as MSE)'
        )
    tolerance = _check_keys(
        f"[models.{name}] export_tolerance", table.get("export_tolerance", {}), EXPORT_TOLERANCE_KEYS, path
    )
    if not all(isinstance(v, int | float) and v >= 0 for v in tolerance.values()):
        raise MatrixError(
            f"{path}: [models.{name}] export_tolerance needs atol and rtol >= 0, got {tolerance}"
        )
    if not isinstance(table.get("calibrate_on_eval", False), bool):
        raise MatrixError(f"{path}: [models.{name}] calibrate_on_eval must be true or false")
    return ModelSpec(
        name=name,
        factory=table["factory"],
        data=table["data"],
        metric=table.get("metric"),
        markers=tuple(_list(f"[models.{name}] markers", table.get("markers", []), str, path)),
        options=dict(table.get("options", {})),
        metric_direction=direction,
        export_tolerance={k: float(v) for k, v in tolerance.items()},
        calibrate_on_eval=table.get("calibrate_on_eval", False),
    )


def _profile(raw: dict[str, Any], name: str | None, path: Path) -> dict[str, Any]:
    profiles = raw.get("profiles", {})
    if name == ALL_PROFILES:
        return {}
    if name is None:
        return _check_keys("[profiles.default]", profiles.get("default", {}), PROFILE_KEYS, path)
    if name not in profiles:
        raise MatrixError(f"{path}: no [profiles.{name}]; defined: {sorted(profiles) or 'none'}")
    return _check_keys(f"[profiles.{name}]", profiles[name], PROFILE_KEYS, path)


def _resolve(where: str, registry: Any, name: str, path: Path) -> Any:
    try:
        return registry.get(name)
    except UnknownEntryError as exc:
        raise MatrixError(f"{path}: {where}: {exc}") from None


def _policies(matrix: Matrix, case_id: str, layers: list[dict[str, Any]]) -> tuple[Any, Any, Any]:
    """Apply each layer's accuracy, regression and timing tables, lowest precedence first."""
    accuracy, regression, timing = AccuracyPolicy(), RegressionPolicy(), TimingPolicy()
    for layer in layers:
        try:
            accuracy = accuracy.merged(layer.get("accuracy", {}))
            regression = regression.merged(layer.get("regression", {}))
            timing = timing.merged(layer.get("timing", {}))
        except (ValueError, TypeError) as exc:
            raise MatrixError(f"{matrix.path}: case {case_id}: {exc}") from None
    return accuracy, regression, timing


def _generate(matrix: Matrix, profile: dict[str, Any]) -> None:
    raw, path = matrix.raw, matrix.path
    techniques = {
        n: _check_keys(f"[techniques.{n}]", t, TECHNIQUE_KEYS, path)
        for n, t in raw.get("techniques", {}).items()
    }
    backends = {
        n: _check_keys(f"[backends.{n}]", t, BACKEND_KEYS, path) for n, t in raw.get("backends", {}).items()
    }
    overrides = [
        _check_keys(f"[[overrides]] #{i + 1}", o, OVERRIDE_KEYS, path)
        for i, o in enumerate(raw.get("overrides", []))
    ]
    global_batches = _list("batch_sizes", raw.get("batch_sizes", [1]), int, path)
    global_layer = {k: raw.get(k, {}) for k in ("accuracy", "regression", "timing")}
    wanted = {
        axis: set(profile[axis]) if axis in profile else None for axis in ("models", "techniques", "backends")
    }
    for model in matrix.models.values():
        for tech_name, tech_table in techniques.items():
            technique = _resolve(f"[techniques.{tech_name}]", TECHNIQUES, tech_name, path)
            for backend_name, backend_table in backends.items():
                backend = _resolve(f"[backends.{backend_name}]", BACKENDS, backend_name, path)
                combo = f"{model.name}-{tech_name}-{backend_name}"
                if any(wanted[a] is not None and n not in wanted[a] for a, n in
                       (("models", model.name), ("techniques", tech_name), ("backends", backend_name))):  # fmt: skip
                    continue
                if backend.device not in technique.devices:
                    matrix.excluded.append(Excluded(combo, f"{tech_name} does not exist on {backend.device}"))
                    continue
                if technique.runtimes is not None and backend.marker not in technique.runtimes:
                    matrix.excluded.append(Excluded(combo, f"{tech_name} means nothing to {backend_name}"))
                    continue
                if not backend.supports(technique.lowering):
                    matrix.excluded.append(
                        Excluded(
                            combo, f"{backend_name} has no {technique.lowering!r} lowering for {tech_name}"
                        )
                    )
                    continue
                model_table = raw["models"][model.name]
                batches = tech_table.get("batch_sizes") or model_table.get("batch_sizes") or global_batches
                for batch in batches:
                    if "batch_sizes" in profile and batch not in profile["batch_sizes"]:
                        continue
                    case_id = f"{combo}-b{batch}"
                    layers = [global_layer, {"accuracy": technique.accuracy}, tech_table, model_table]
                    layers += [o for o in overrides if fnmatch.fnmatchcase(case_id, str(o.get("match", "")))]
                    accuracy, regression, timing = _policies(matrix, case_id, layers)
                    markers = ["cpu" if backend.device == "cpu" else "gpu", backend.marker]
                    markers += [*backend.extra_markers, *model.markers]
                    markers += [technique.family] if technique.family else []
                    markers += [*tech_table.get("markers", []), *backend_table.get("markers", [])]
                    threads = {
                        **_check_keys("[threads]", raw.get("threads", {}), THREAD_KEYS, path),
                        **_check_keys(
                            f"[backends.{backend_name}.threads]",
                            backend_table.get("threads", {}),
                            THREAD_KEYS,
                            path,
                        ),
                    }
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
                            technique_options={**technique.default_options, **tech_table.get("options", {})},
                            threads=threads,
                        )
                    )
