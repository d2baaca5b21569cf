"""What every technique provides: a model transform, a lowering, and default tolerances."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from perfgate.cache import ArtifactCache
from perfgate.calibration import CALIBRATED_LOWERING, CALIBRATION_RULE, Calibration
from perfgate.data import ModelData
from perfgate.hardware import Hardware
from perfgate.model_kinds import CLASSICAL, ONNX, TORCH
from perfgate.validation import Rule, SettingError, boolean, check_table, integer

# Options every technique takes: backends read them from the case's technique options
# (perfgate/cuda_timing.py, perfgate/backends/tensorrt.py).
RUNTIME_OPTIONS: dict[str, Rule] = {
    "copies_timed": boolean(hint="time the host-device copies too (CUDA backends)"),
    "trt_min_batch": integer(1, hint="the TensorRT profile's smallest batch"),
    "trt_max_batch": integer(1, hint="the TensorRT profile's largest batch"),
}


# What a technique declares when it applies to every kind of model, or to torch models and ONNX
# files (a lowering the ONNX backends apply to the graph itself: static INT8, FP16).
EVERY_KIND = frozenset({TORCH, CLASSICAL, ONNX})
GRAPH_KINDS = frozenset({TORCH, ONNX})


class NotApplicable(Exception):
    """A technique cannot transform this model (e.g. it needs labelled training data it lacks).

    Raised by ``transform``; the case is skipped with the message, which names the model.
    """


@dataclass(frozen=True)
class TransformContext:
    """What a technique's torch-level transform may use: data, the cache and its options."""

    model_name: str
    model_key: str
    data: ModelData
    cache: ArtifactCache
    options: dict[str, Any]
    progress: Callable[[str], None]


@dataclass(frozen=True)
class Technique:
    """One optimization: a torch-level ``transform`` followed by a backend ``lowering``.

    ``lowering`` names what the backend must do with the transformed model ("none",
    "int8_dynamic", ...); a backend that cannot do it never gets a case. ``accuracy`` holds the
    technique's default tolerances, documented in docs/techniques.md and overridable per case.
    """

    name: str
    description: str
    lowering: str = "none"
    family: str | None = None
    lossless: bool = False
    devices: frozenset[str] = frozenset({"cpu", "cuda"})  # where the technique exists at all
    # Backend markers ("torch", "onnxruntime", ...) on which the technique means anything; ``None``
    # for all. A combination outside it is never generated (channels-last means nothing to ONNX).
    runtimes: frozenset[str] | None = None
    # The kinds of model it applies to (perfgate.model_kinds): a torch-level transform or a lowering
    # of torch layers means nothing to a tree ensemble, so that combination is never generated.
    model_kinds: frozenset[str] = frozenset({TORCH})
    accuracy: dict[str, float | None] = field(default_factory=dict)
    # Whether the technique makes every weight narrower (INT8, FP16): a variant that is not smaller
    # than the FP32 model did not do what it says. Channel pruning and distillation shrink the
    # parameter count instead (recorded by ``describe``); their artifact is compared in another
    # format's overhead (an OpenVINO IR against a torch state dict), so size alone cannot judge them.
    size_reducing: bool = False
    default_options: dict[str, Any] = field(default_factory=dict)

    # The options this technique reads (``[techniques.X] options``), each with its type and range;
    # the runtime options and, for an ``int8_static`` lowering, ``calibration`` come on top (see
    # :meth:`option_rules`). A misspelled key is refused at load time with the valid ones. A
    # technique class that cannot declare its options sets ``None``: its options are not checked.
    option_keys: ClassVar[Mapping[str, Rule] | None] = {}
    # Options that must have a value once the defaults and the matrix's table are merged.
    required_options: ClassVar[tuple[str, ...]] = ()

    def option_rules(self) -> dict[str, Rule] | None:
        """Every option key this technique accepts and its rule; ``None`` when it does not declare them."""
        if self.option_keys is None:
            return None
        rules = dict(RUNTIME_OPTIONS)
        if self.calibrates:
            rules["calibration"] = CALIBRATION_RULE
        return {**rules, **self.option_keys}

    @property
    def calibrates(self) -> bool:
        """Whether the lowering calibrates on data, so that the technique takes a ``calibration`` option."""
        return self.lowering == CALIBRATED_LOWERING

    def calibration(self, options: dict[str, Any]) -> Calibration | None:
        """The case's calibration, parsed from its merged ``options``; ``None`` when the lowering has none.

        :raises SettingError: an unknown key, or a value of the wrong type or range.
        """
        return Calibration.from_options(options) if self.calibrates else None

    def check_options(self, options: dict[str, Any]) -> None:
        """Check the matrix's ``options`` table (before the defaults are merged in).

        :raises SettingError: an unknown key or a value of the wrong type or range; the key is
            relative to the table (``amount``, ``calibration.size``).
        """
        rules = self.option_rules()
        if rules is not None:
            check_table(options, rules, f"option of {self.name}")

    def check_merged_options(self, options: dict[str, Any]) -> None:
        """Check the options a case gets (defaults and the matrix's table merged): required keys.

        :raises SettingError: a required option has no value.
        """
        for key in self.required_options:
            if options.get(key) is None:
                rules = self.option_rules() or {}
                rule = (
                    f"{self.name} needs it: set it to {rules[key].describe()}" if key in rules else "required"
                )
                raise SettingError(key, options.get(key), rule)

    def transform(self, model: Any, ctx: TransformContext) -> Any:
        """Return the torch model this technique hands to the backend (the input by default)."""
        return model

    def transform_key(self, options: dict[str, Any]) -> str | None:
        """What the transform depends on beyond the input model, or ``None`` for no transform."""
        return None

    def missing(self, hardware: Hardware, device: str) -> str | None:
        """Why this technique cannot run on this runner's hardware on ``device``, or ``None``.

        Checked at collection: a case it names is skipped with that one-line reason.

        :param hardware: this runner.
        :param device: where the case runs, its backend's device: ``"cpu"`` or ``"cuda"``.
        """
        return None

    def run_settings(self, hardware: Hardware) -> dict[str, int] | None:
        """Thread settings this technique imposes (``intra_op``, ``inter_op``), or ``None``."""
        return None

    def describe(self, model: Any, original: Any) -> dict[str, Any]:
        """What the transform achieved (sparsity, parameter counts), recorded in the result's settings.

        :param model: the transformed model, as ``transform`` returned it.
        :param original: the model before the transform.
        """
        return {}
