"""Session-wide state: the matrix, this runner, the cache, loaded models and reference outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perfgate.accuracy import resolve_metric
from perfgate.backends import BACKENDS, BuildRequest, RunSettings, predict, reference_backend
from perfgate.cache import ArtifactCache
from perfgate.data import ModelData
from perfgate.hardware import Hardware
from perfgate.matrix import Matrix, ModelSpec
from perfgate.model_kinds import MODEL_KINDS
from perfgate.models import LoadedModel, ModelContext
from perfgate.registry import import_object

STEPS = ("building", "timing")  # execution.py reports each case's steps as "<case id>: <step>"


@dataclass
class MatrixProgress:
    """Where a run is in the selected matrix, so that a progress line reads ``[7/42] <case>: timing``."""

    positions: dict[str, int] = field(default_factory=dict)
    current: int | None = None

    def select(self, nodeids: Sequence[str]) -> None:
        """Number the cases that survived selection (-m, -k, deselection), 1-based, in run order."""
        self.positions = {nodeid: index for index, nodeid in enumerate(nodeids, 1)}

    def enter(self, nodeid: str) -> None:
        """The case ``nodeid`` starts; progress lines until the next one carry its position."""
        self.current = self.positions.get(nodeid)

    def line(self, text: str) -> str:
        return f"[{self.current}/{len(self.positions)}] {text}" if self.current else text

    @staticmethod
    def is_step(text: str) -> bool:
        """A routine per-case step (shown only with -v), as opposed to a rare long one such as training."""
        return text.rpartition(": ")[2] in STEPS


# Libraries a model's factory may import that an extra of perfgate installs: the skip line names it.
OPTIONAL_LIBRARIES = dict.fromkeys(
    ("xgboost", "lightgbm", "skl2onnx", "onnxmltools"), "pip install 'perfgate[classical]'"
)


class ModelLoadError(RuntimeError):
    """A model's factory or data loader failed; the message names the model and the matrix file."""


@dataclass
class PerfgateSession:
    """Everything the cases of one pytest session share."""

    matrix: Matrix
    hardware: Hardware
    runner: str
    cache: ArtifactCache
    baseline_root: Path
    progress: Callable[[str], None]
    # The run journal's record of a case entering a step (case id, step name).
    on_step: Callable[[str, str], None] = field(default=lambda case_id, step: None)
    # Called from a watchdog thread when a case hangs in native code past its time limit.
    on_hang: Callable[[str], None] | None = None
    # Other perfgate runs timing on this machine right now (perfgate.concurrency).
    concurrent_runs: Callable[[], list[dict[str, Any]]] = field(default=list)
    # Under --perf-gate history: the history gate's verdict for a case's sessions, instead of the
    # baseline file's (perfgate.history).
    history_judge: Callable[[Any, list[Any]], Any] | None = None
    # What to profile after timing (perfgate.profiling): a confirmed regression, the cases asked
    # for by id, every case of a baseline refresh (its summary is stored with the baseline).
    trace_failures: bool = False
    trace_cases: frozenset[str] = frozenset()
    profile_refresh: bool = False
    # Seconds of each case's energy loop after its timing (perfgate.energy); 0: not measured.
    energy_s: float = 0.0
    _energy_counters: dict[str, Any] = field(default_factory=dict)
    counter: MatrixProgress = field(default_factory=MatrixProgress)
    _models: dict[str, LoadedModel] = field(default_factory=dict)
    _references: dict[str, np.ndarray] = field(default_factory=dict)

    def model(self, spec: ModelSpec) -> LoadedModel:
        """Load (train or fetch from the cache) a model once per session."""
        if spec.name not in self._models:
            self._models[spec.name] = self._load_model(spec)
        return self._models[spec.name]

    def _load_model(self, spec: ModelSpec) -> LoadedModel:
        where = f"model {spec.name!r} in {self.matrix.path}"
        try:
            data = import_object(spec.data)()
        except Exception as exc:
            raise ModelLoadError(f"{where}: data loader {spec.data} failed: {exc!r}") from exc
        if not isinstance(data, ModelData):
            raise ModelLoadError(
                f"{where}: {spec.data} returned {type(data).__name__}, not perfgate.ModelData"
            )
        if spec.calibrate_on_eval:
            data = dataclasses.replace(data, calibrate_on_eval=True)
        ctx = ModelContext(spec.name, data, self.cache, spec.options, self.progress)
        try:
            model = import_object(spec.factory)(ctx)
        except ModuleNotFoundError as exc:
            from perfgate.backends.base import module_installed, skip_case

            if not exc.name or module_installed(exc.name):
                raise ModelLoadError(f"{where}: factory {spec.factory} failed: {exc!r}") from exc
            # A library the model needs is not installed: like a missing backend, its cases are
            # skipped with the install line, not failed.
            hint = OPTIONAL_LIBRARIES.get(exc.name.partition(".")[0], "install it")
            skip_case(
                f"{where}: its factory {spec.factory} needs {exc.name}, which is not installed ({hint})"
            )
        except Exception as exc:
            raise ModelLoadError(f"{where}: factory {spec.factory} failed: {exc!r}") from exc
        kind = MODEL_KINDS[spec.kind]
        if not kind.accepts(model):
            other = [k for k in MODEL_KINDS.values() if k is not kind and k.accepts(model)]
            fix = (
                f'; if it is meant to be one, set kind = "{other[0].name}" in [models.{spec.name}]'
                if other
                else ""
            )
            raise ModelLoadError(
                f"{where}: {spec.factory} returned {type(model).__name__}, not {kind.returns}"
                f" (kind = {spec.kind!r}){fix}"
            )
        if hasattr(model, "eval") and kind.name == "torch":
            model.eval()
        try:
            key = kind.fingerprint(model)
        except ValueError as exc:
            raise ModelLoadError(f"{where}: {spec.factory}: {exc}") from exc
        return LoadedModel(spec.name, model, data, key, kind=spec.kind)

    def energy_counter(self, device: str) -> Any:
        """The energy counter of ``device`` (perfgate.energy), or why there is none; found once."""
        if device not in self._energy_counters:
            from perfgate.energy import counter_for

            self._energy_counters[device] = counter_for(device)
        return self._energy_counters[device]

    def reference_outputs(self, model: LoadedModel) -> np.ndarray:
        """The reference backend's FP32 outputs on the whole eval set (torch eager for a torch model, the
        estimator's own prediction for a classical one): what every variant is judged against."""
        if model.name not in self._references:
            backend = BACKENDS.get(reference_backend(model.kind))
            request = BuildRequest(
                case_id=f"{model.name}-reference",
                model=model.module,
                model_key=model.key,
                lowering="none",
                options={},
                data=model.data,
                batch_size=len(model.data.eval_inputs),
                cache=self.cache,
                model_kind=model.kind,
            )
            session = backend.load(backend.build(request), request, RunSettings())
            try:
                self._references[model.name] = predict(session, model.data.eval_inputs, 64)
            finally:
                session.close()
        return self._references[model.name]

    def reference_metric(self, spec: ModelSpec, model: LoadedModel) -> float | None:
        if spec.metric is None or model.data.eval_labels is None:
            return None
        return resolve_metric(spec.metric)(self.reference_outputs(model), model.data.eval_labels)
