"""What every backend provides: ``missing``, ``build``, ``load``, and a session that runs."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol

from perfgate.cache import ArtifactCache
from perfgate.calibration import CALIBRATED_LOWERING, Calibration
from perfgate.data import ModelData
from perfgate.model_kinds import TORCH

if TYPE_CHECKING:  # numpy is imported where arrays are made: importing the registry stays cheap
    import numpy as np

    from perfgate.profiling import OperatorProfile


@dataclass(frozen=True)
class BuildRequest:
    """Everything a backend needs to turn a (transformed) torch model into a runnable artifact."""

    case_id: str
    # A torch.nn.Module in eval mode after the technique's model transform, or for a classical
    # model (``model_kind``) the fitted estimator (perfgate.model_kinds).
    model: Any
    model_key: str  # hash of the model's architecture and weights
    lowering: str  # the numeric lowering the technique asks of the backend
    options: dict[str, Any]
    data: ModelData
    batch_size: int
    cache: ArtifactCache
    # The session's thread settings, for a backend whose build depends on them (inductor bakes
    # the thread count into its kernels); ``None`` when the caller does not give them.
    run_settings: RunSettings | None = None
    # How far an ONNX export may differ from torch (perfgate.backends.onnx_export.ExportTolerance);
    # ``None`` for the default. A model sets it in its matrix table.
    export_tolerance: Any = None
    # How an ``int8_static`` lowering calibrates, parsed from the technique's options when the
    # matrix loaded (perfgate.matrix); ``None`` for every other lowering.
    calibration: Calibration | None = None
    # What ``model`` is: perfgate.model_kinds.TORCH or CLASSICAL.
    model_kind: str = TORCH

    def require_calibration(self) -> Calibration:
        """The calibration of an ``int8_static`` lowering, for a backend about to calibrate.

        :raises ValueError: the request carries none (built by hand without ``calibration=``).
        """
        if self.calibration is None:
            raise ValueError(
                f"{self.case_id}: the {CALIBRATED_LOWERING} lowering needs BuildRequest.calibration "
                "(perfgate.calibration.Calibration.from_options(options)); the request has none"
            )
        return self.calibration


@dataclass
class Artifact:
    """A built model: where it lies on disk, what it cost, and the in-memory object if any."""

    path: Path | None
    size_bytes: int
    build_s: float
    cached: bool
    payload: Any = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """Thread settings of a session; ``None`` keeps the library's default."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None


class Session(Protocol):
    """A loaded model. ``bind`` once, then ``run`` is what the timing loop calls."""

    settings: dict[str, Any]
    needs_sync: bool

    def bind(self, inputs: np.ndarray) -> None: ...
    def run(self) -> None: ...
    def output(self) -> np.ndarray: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


class Backend:
    """Base of every backend; a subclass sets the class attributes and the three verbs."""

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"  # "cpu" or "cuda"
    marker: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()  # importable modules it needs
    install_hint: ClassVar[str] = ""
    lowerings: ClassVar[frozenset[str]] = frozenset({"none"})
    # Markers every case of this backend gets besides ``marker``: "compiled" for torch.compile
    # and CUDA graphs, so that ``-m compiled`` selects them without the matrix naming it.
    extra_markers: ClassVar[tuple[str, ...]] = ()
    # Distributions (pip names) whose major.minor version moves this backend's latency: another
    # one than the baseline's makes its verdicts incomparable. perfgate.hardware records their
    # versions with every result, and drift lists their changes, for every registered backend.
    libraries: ClassVar[tuple[str, ...]] = ()
    # The kinds of model it runs (perfgate.model_kinds); a model of another kind never gets a case.
    model_kinds: ClassVar[frozenset[str]] = frozenset({TORCH})

    def supports(self, lowering: str) -> bool:
        """Whether this backend can run a technique that asks for ``lowering``."""
        return lowering in self.lowerings

    def missing(self) -> str | None:
        """Why this backend cannot run here, in one line, or ``None`` when it can.

        A required module that is not installed is named with the install hint; one that is
        installed but fails to import (a missing shared library, a binary built for another
        numpy) with the import error's own line, so that only this backend's cases are skipped.
        Each module is imported at most once per process (:func:`import_problem`), the
        :data:`BUILD_ONLY_MODULES` not at all: the case that imports them reports their failure.
        """
        absent = [module for module in self.requires if not module_installed(module)]
        if absent:
            hint = f" ({self.install_hint})" if self.install_hint else ""
            return f"{self.name}: {', '.join(absent)} is not installed{hint}"
        for module in self.requires:
            if module in BUILD_ONLY_MODULES:
                continue
            problem = import_problem(module)
            if problem is not None:
                return f"{self.name}: {problem}"
        if self.device == "cuda":
            from perfgate.hardware import cuda_missing_reason

            return cuda_missing_reason()
        return None

    def build(self, request: BuildRequest) -> Artifact:
        raise NotImplementedError

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> Session:
        raise NotImplementedError

    def profile(
        self,
        artifact: Artifact,
        request: BuildRequest,
        settings: RunSettings,
        session: Session,
        inputs: np.ndarray,
        folder: Path,
    ) -> OperatorProfile:
        """Run the case under the backend's own profiler, outside any timed round.

        :param artifact: what ``build`` returned.
        :param request: the case's build request.
        :param settings: its thread settings.
        :param session: its loaded session, bound to ``inputs`` (a profiler that wraps calls,
            torch's, runs it; one configured at load, ONNX Runtime's, loads its own).
        :param inputs: the batch the case is timed on.
        :param folder: where the profiler's own files go (a trace, a table).
        :raises ProfileUnavailable: the backend has no profiler perfgate reads; the message says so.
        """
        from perfgate.profiling import ProfileUnavailable

        raise ProfileUnavailable(f"{self.name} has no per-operator profiler that perfgate reads")

    def inspect(self, artifact: Artifact) -> dict[str, int]:
        """What the built artifact's compute ops really run in: ``quantized_ops`` and ``float_ops``.

        A compute op is one with weights (a linear, a convolution, a recurrent layer); it counts as
        quantized when its weights are INT8 (or narrower) in the artifact that runs, and as float
        otherwise. An INT8 lowering can silently leave layers float (a GRU the quantizer does not
        handle), which only this count shows. The base answers ``{}``: unknown.

        :param artifact: what ``build`` returned.
        :returns: ``{"quantized_ops": n, "float_ops": m}``, or ``{}`` when the backend cannot tell.
        """
        return {}


# Required modules that ``missing`` does not import at collection: litert_torch, only imported
# to convert a model the cache lacks (seconds and half a gigabyte), and onnx, which (nanobind)
# cannot be imported a second time in a process that dropped it from sys.modules, as an
# in-process pytester run does when it ends. A failure to import them shows in the case that does.
BUILD_ONLY_MODULES = frozenset({"onnx", "litert_torch"})


def module_installed(module: str) -> bool:
    """Whether ``module``'s top-level package can be found, without importing it (not cached)."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):  # a broken entry in sys.modules or on the path
        return True  # installed in some form; import_problem says what is wrong with it


@functools.cache
def import_problem(module: str) -> str | None:
    """Why the installed ``module`` cannot be imported, in one line, or ``None`` when it imports.

    The import is tried once per process: a module that imports is then in ``sys.modules`` (its
    users import it anyway), one that fails is not retried for every case.

    :param module: a dotted module name (``openvino``, ``ai_edge_litert.interpreter``).
    :returns: ``"<module> is not installed"``, ``"<module> is installed but fails to import:
        ImportError: <the error's first line>"``, or ``None``.
    """
    if not module_installed(module):
        return f"{module} is not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure of a native extension or of the package's own code
        return f"{module} is installed but fails to import: {error_line(exc)}"
    return None


def error_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, for a one-line reason."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_import(who: str, module: str) -> None:
    """Skip the running case when ``module`` is installed but fails to import (:data:`BUILD_ONLY_MODULES`).

    :param who: the case id or backend name the skip line starts with.
    :param module: the module the build is about to import.
    """
    problem = import_problem(module)
    if problem is not None:
        skip_case(f"{who}: {problem}")


def skip_case(reason: str) -> NoReturn:
    """Skip the running case from ``build`` or ``load``, for what only the build can find out.

    For a lowering this runner cannot do faithfully (a precision the CPU would silently replace,
    a calibration method the toolchain lacks, an optional converter not installed): a one-line
    reason, not a failure. What ``missing`` can tell at collection belongs there instead.

    :param reason: the skip line; it names the case and what is missing.
    """
    import pytest

    pytest.skip(reason)


def predict(session: Session, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` through the session in batches of ``batch_size``.

    The last batch is padded with repeated rows, so that a backend compiled for a static batch
    size sees only that size; the padding rows are dropped from the result.
    """
    import numpy as np

    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
        session.bind(np.ascontiguousarray(chunk))
        session.run()
        session.synchronize()
        outputs.append(np.array(session.output()[:real], copy=True))
    return np.concatenate(outputs)
