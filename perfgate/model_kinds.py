"""What a model of the matrix is: a torch module, a classical estimator, or an ONNX file.

A model's kind (``kind = "classical"`` or ``"onnx"`` in its ``[models.NAME]`` table, ``"torch"``
by default) decides which backends and techniques can run it (each declares its
``model_kinds``; any other combination is never generated), what its factory must return, how
its weights are fingerprinted and sized, and which backend computes the reference outputs every
variant is judged against: torch eager for a torch module, the estimator's own
``predict_proba``/``predict`` for a classical one (scikit-learn's API), ONNX Runtime on the file
itself for an ONNX file. Importing this module imports neither torch nor scikit-learn.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any

TORCH, CLASSICAL, ONNX = "torch", "classical", "onnx"


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: what its factory returns and which backend is its reference."""

    name: str
    returns: str  # what a factory of this kind must return, as error messages say it
    # The backend whose FP32 outputs are this kind's reference; ``None`` for the backend registered
    # with ``reference=True`` (perfgate.backends.reference_backend resolves it).
    reference_backend: str | None
    # The marker every case of a model of this kind gets (``-m classical``); ``None`` for none.
    marker: str | None

    def accepts(self, model: Any) -> bool:
        """Whether ``model`` (what a factory returned) is of this kind."""
        raise NotImplementedError

    def fingerprint(self, model: Any) -> str:
        """A hash of the model's definition and every learned parameter: cache keys follow it."""
        raise NotImplementedError

    def weight_bytes(self, model: Any) -> int:
        """The serialized size of the model as trained: what its FP32 case ships."""
        raise NotImplementedError


class TorchKind(ModelKind):
    def accepts(self, model: Any) -> bool:
        import torch

        return isinstance(model, torch.nn.Module)

    def fingerprint(self, model: Any) -> str:
        """A hash of a module's class source, structure and every parameter and buffer."""
        digest = hashlib.sha256()
        digest.update(type(model).__qualname__.encode())
        # Classes built at run time have no source; their repr and weights still count.
        with contextlib.suppress(OSError, TypeError):
            digest.update(inspect.getsource(type(model)).encode())
        digest.update(repr(model).encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:20]

    def weight_bytes(self, model: Any) -> int:
        """Bytes of the module's state dict as ``torch.save`` writes it."""
        import torch

        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes


class ClassicalKind(ModelKind):
    def accepts(self, model: Any) -> bool:
        # scikit-learn's API, which XGBoost's and LightGBM's estimators implement too; a fitted
        # one has a predict (and a classifier a predict_proba, checked where it is called).
        return callable(getattr(model, "predict", None)) and callable(getattr(model, "get_params", None))

    def fingerprint(self, model: Any) -> str:
        """A hash of the pickled estimator: its class, hyper-parameters and fitted state."""
        digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        try:
            digest.update(pickle.dumps(model, protocol=5))
        except Exception as exc:  # a local class, a lambda in a FunctionTransformer...
            raise ValueError(
                f"the fitted {type(model).__name__} cannot be pickled ({type(exc).__name__}: {exc}), and "
                "perfgate keys its cached conversions on the pickled estimator: define its classes and "
                "functions at a module's top level"
            ) from exc
        return digest.hexdigest()[:20]

    def weight_bytes(self, model: Any) -> int:
        """Bytes of the pickled estimator, as ``joblib``/``pickle`` would ship it."""
        return len(pickle.dumps(model, protocol=5))


class OnnxKind(ModelKind):
    """A model that exists only as an ONNX file: its factory returns the file's path. Its
    reference is ONNX Runtime running the file as it is (``onnxruntime_cpu``, fp32)."""

    def accepts(self, model: Any) -> bool:
        from pathlib import Path

        return isinstance(model, str | os.PathLike) and Path(model).suffix == ".onnx" and Path(model).is_file()

    def fingerprint(self, model: Any) -> str:
        """A hash of the file's bytes: another export of the model is another model."""
        from pathlib import Path

        digest = hashlib.sha256(b"onnx-file")
        with Path(model).open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()[:20]

    def weight_bytes(self, model: Any) -> int:
        from pathlib import Path

        return Path(model).stat().st_size


MODEL_KINDS: dict[str, ModelKind] = {
    TORCH: TorchKind(TORCH, "a torch.nn.Module", reference_backend=None, marker=None),
    CLASSICAL: ClassicalKind(
        CLASSICAL,
        "a fitted estimator with scikit-learn's API (scikit-learn, XGBoost, LightGBM)",
        reference_backend="sklearn",
        marker="classical",
    ),
    ONNX: OnnxKind(ONNX, "the path of an .onnx file", reference_backend="onnxruntime_cpu", marker=None),
}
