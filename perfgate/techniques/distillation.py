"""Knowledge distillation: a smaller student trained on the teacher's softened outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from perfgate.registry import import_object
from perfgate.techniques.base import Technique, TransformContext
from perfgate.techniques.finetune import cached_fit, parameter_count, require_labels
from perfgate.training import TrainConfig, distillation_loss
from perfgate.validation import Rule, import_path, integer, number


class Distillation(Technique):
    """Builds the student named by ``options.student`` and trains it against the FP32 teacher.

    ``student`` is a ``"module:function"`` path; the function takes the trained teacher and
    returns an untrained, smaller ``nn.Module`` with the same inputs and outputs.
    """

    option_keys: ClassVar[Mapping[str, Rule] | None] = {
        "student": import_path(hint="builds an untrained, smaller student from the teacher"),
        "temperature": number(0, low_open=True, hint="T, how much the logits are softened"),
        "alpha": number(0, 1, hint="the soft term's weight; 1 - alpha goes to the labels"),
        "epochs": integer(1, hint="the student's training epochs"),
        "lr": number(0, low_open=True, hint="the student's learning rate"),
        "max_shift": integer(0, hint="the augmentation's translation, in pixels"),
        "seed": integer(0, hint="seeds the student's initialisation and the training"),
    }
    required_options: ClassVar[tuple[str, ...]] = ("student",)

    def transform(self, model: Any, ctx: TransformContext) -> Any:
        require_labels(ctx, self.name)
        options = ctx.options
        if not options.get("student"):
            raise ValueError(
                f"distill: model {ctx.model_name!r}: set [techniques.distill] options.student "
                "to a 'module:function' that builds a student from the teacher"
            )
        builder = import_object(str(options["student"]))
        torch.manual_seed(int(options["seed"]))  # the student's initialisation enters no cache key otherwise
        student = builder(model)
        config = TrainConfig(
            epochs=int(options["epochs"]),
            lr=float(options["lr"]),
            max_shift=int(options["max_shift"]),
            label_smoothing=0.0,  # the soft targets already are smooth
            seed=int(options["seed"]),
        )
        loss = distillation_loss(model, float(options["temperature"]), float(options["alpha"]))
        return cached_fit(
            student, ctx, "distilled", self.transform_key(options) + repr(student), config, loss
        )

    def transform_key(self, options: dict[str, Any]) -> str:
        return f"distill:{sorted(options.items())}"

    def describe(self, model: Any, original: Any) -> dict[str, Any]:
        return {"params_teacher": parameter_count(original), "params_student": parameter_count(model)}


DISTILL = Distillation(
    name="distill",
    description="half-width student trained on the teacher's softened outputs (T=4, alpha=0.7)",
    family="distilled",
    # A student is a different, smaller network: it is held to the task metric (within 2% of the
    # teacher's top-1) and to agreeing with the teacher, not to the teacher's exact logits.
    accuracy={"min_relative_metric": 0.98, "min_top1_agreement": 0.95},
    default_options={
        "student": None,
        "temperature": 4.0,
        "alpha": 0.7,
        "epochs": 15,
        "lr": 3e-3,
        "max_shift": 1,
        "seed": 0,
    },
)
