"""What every backend provides: ``missing``, ``build``, ``load``, and a session that runs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol

import numpy as np

from perfgate.cache import ArtifactCache
from perfgate.data import ModelData


@dataclass(frozen=True)
class BuildRequest:
    """Everything a backend needs to turn a (transformed) torch model into a runnable artifact."""

    case_id: str
    model: Any  # torch.nn.Module in eval mode, after the technique's model transform
    model_key: str  # hash of the model's architecture and weights
    lowering: str  # the numeric lowering the technique asks of the backend
    options: dict[str, Any]
    data: ModelData
    batch_size: int
    cache: ArtifactCache
    # The session's thread settings, for a backend whose build depends on them (inductor bakes
    # the thread count into its kernels); ``None`` when the caller does not give them.
    run_settings: RunSettings | None = None
    # How far an ONNX export may differ from torch (perfgate.export.ExportTolerance); ``None``
    # for the default. A model sets it in its matrix table.
    export_tolerance: Any = None


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
    # Markers every case of this backend gets besides ``marker`` (torch.compile: "compiled").
    extra_markers: ClassVar[tuple[str, ...]] = ()
    # Distributions (as in perfgate.hardware.LIBRARIES) whose major.minor version moves this
    # backend's latency: another one than the baseline's makes its verdicts incomparable.
    libraries: ClassVar[tuple[str, ...]] = ()

    def supports(self, lowering: str) -> bool:
        """Whether this backend can run a technique that asks for ``lowering``."""
        return lowering in self.lowerings

    def missing(self) -> str | None:
        """Why this backend cannot run here, in one line, or ``None`` when it can."""
        absent = [module for module in self.requires if importlib.util.find_spec(module) is None]
        if absent:
            hint = f" ({self.install_hint})" if self.install_hint else ""
            return f"{self.name}: {', '.join(absent)} is not installed{hint}"
        if self.device == "cuda":
            from perfgate.hardware import cuda_missing_reason

            return cuda_missing_reason()
        return None

    def build(self, request: BuildRequest) -> Artifact:
        raise NotImplementedError

    def load(self, artifact: Artifact, request: BuildRequest, settings: RunSettings) -> Session:
        raise NotImplementedError

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
