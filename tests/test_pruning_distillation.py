"""Pruning, distillation, channels-last and thread tuning, on tiny real models (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TinyMLP, blobs, tiny_mlp
from torch import nn

from fixtures.zoo import MobileNetV2, PatchTransformer, ResNet, half_width_student
from perfgate.cache import ArtifactCache
from perfgate.matrix import load_matrix
from perfgate.models import ModelContext, model_fingerprint
from perfgate.techniques import TECHNIQUES, TransformContext
from perfgate.techniques.finetune import parameter_count
from perfgate.techniques.pruning import prune_channels, weight_sparsity
from perfgate.techniques.runtime import physical_cores

REPO = Path(__file__).parent.parent


class HalfMLP(nn.Module):
    """A student for TinyMLP: the same depth at a quarter of the hidden width."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def half_mlp(teacher: nn.Module) -> nn.Module:
    return HalfMLP()


@pytest.fixture(scope="module")
def teacher(shared_cache: Path) -> tuple[nn.Module, TransformContext]:
    """The trained tiny MLP and a transform context on its blobs data."""
    data = blobs()
    cache = ArtifactCache(shared_cache)
    model = tiny_mlp(ModelContext("tiny_mlp", data, cache, {}, lambda line: None))
    ctx = TransformContext("tiny_mlp", model_fingerprint(model), data, cache, {}, lambda line: None)
    return model, ctx


def top1(model: nn.Module, ctx: TransformContext) -> float:
    with torch.no_grad():
        outputs = model(torch.from_numpy(ctx.data.eval_inputs)).numpy()
    return float(np.mean(outputs.argmax(1) == ctx.data.eval_labels))


def transformed(name: str, teacher: tuple[nn.Module, TransformContext], **options: object) -> nn.Module:
    technique = TECHNIQUES.get(name)
    model, ctx = teacher
    options = {**technique.default_options, **options}
    ctx = TransformContext(ctx.model_name, ctx.model_key, ctx.data, ctx.cache, options, ctx.progress)
    return technique.transform(model, ctx)


def test_unstructured_pruning_reaches_sparsity_and_keeps_accuracy(teacher) -> None:
    """50% global L1 pruning leaves 50% (+-1%) exact zeros, as plain weights, and keeps top-1."""
    model, ctx = teacher
    pruned = transformed("prune_unstructured", teacher, amount=0.5)
    assert abs(weight_sparsity(pruned) - 0.5) <= 0.01
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())  # masks folded away
    assert top1(pruned, ctx) >= 0.99 * top1(model, ctx)
    described = TECHNIQUES.get("prune_unstructured").describe(pruned, model)
    assert described["weight_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_unstructured_per_layer_scope_prunes_every_layer_alike(teacher) -> None:
    """Per-layer ranking takes the requested share out of each layer, so also overall."""
    pruned = transformed("prune_unstructured", teacher, amount=0.7, scope="layer", epochs=1)
    assert abs(weight_sparsity(pruned) - 0.7) <= 0.01
    for layer in pruned.net:
        if isinstance(layer, nn.Linear):
            assert float((layer.weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)


def test_structured_pruning_removes_channels_and_keeps_accuracy(teacher) -> None:
    """30% of the hidden units go for real (smaller tensors), and fine-tuning holds top-1."""
    model, ctx = teacher
    pruned = transformed("prune_structured", teacher, amount=0.3)
    hidden = [layer.out_features for layer in pruned.net if isinstance(layer, nn.Linear)]
    assert hidden == [45, 45, 4]  # 64 - round(0.3 * 64)
    described = TECHNIQUES.get("prune_structured").describe(pruned, model)
    assert described["params_before"] == parameter_count(model) == 5508
    # 16*45+45 + 45*45+45 + 45*4+4: the middle layer loses 30% of its inputs and of its outputs.
    assert described["params_after"] == parameter_count(pruned) == 3019
    assert top1(pruned, ctx) >= 0.99 * top1(model, ctx)


@pytest.mark.parametrize(
    ("build", "low", "high"),
    [
        (lambda: ResNet(1, (8, 16), (1, 1)), 0.22, 0.30),  # inner convs only: shortcuts, stem, fc stay
        (lambda: MobileNetV2(1, 8, ((1, 8, 1, 1), (4, 16, 2, 2)), 32), 0.15, 0.30),  # expanded channels
        (
            lambda: PatchTransformer(image=16, patch=4, dim=16, depth=1, heads=2, ff=64),
            0.15,
            0.30,
        ),  # FFN units
    ],
    ids=["resnet", "mobilenetv2", "transformer"],
)
def test_structured_pruning_handles_every_zoo_architecture(build, low: float, high: float) -> None:
    """Each zoo family loses about the requested share of parameters and keeps its output shape."""
    torch.manual_seed(0)
    model = build().eval()
    pruned = prune_channels(model, 0.3, "zoo").eval()
    removed = 1 - parameter_count(pruned) / parameter_count(model)
    assert low <= removed <= high
    x = torch.randn(2, 1, 16, 16)
    assert pruned(x).shape == model(x).shape == (2, 10)


def test_structured_pruning_names_the_model_it_cannot_handle() -> None:
    with pytest.raises(
        ValueError, match=r"prune_structured: model 'lonely' \(Conv2d\) has no chain it can prune"
    ):
        prune_channels(nn.Conv2d(1, 4, 3), 0.3, "lonely")


def test_distilled_student_is_smaller_and_accurate(teacher) -> None:
    """A quarter-width student trained on softened outputs reaches 98% of the teacher's top-1."""
    model, ctx = teacher
    student = transformed(
        "distill", teacher, student=f"{__name__}:half_mlp", epochs=8, temperature=4.0, alpha=0.7
    )
    assert isinstance(student, HalfMLP)
    assert parameter_count(student) < parameter_count(model) / 4
    assert top1(student, ctx) >= 0.98 * top1(model, ctx)


def test_half_width_students_of_the_zoo_are_smaller() -> None:
    for teacher in (
        ResNet(1, (8, 16), (1, 1)),
        PatchTransformer(image=16, patch=4, dim=16, depth=1, heads=2, ff=32),
    ):
        student = half_width_student(teacher)
        assert type(student) is type(teacher)
        assert parameter_count(student) < parameter_count(teacher) / 2
    with pytest.raises(ValueError, match="no student builder for TinyMLP"):
        half_width_student(TinyMLP())


def test_channels_last_is_never_generated_for_onnxruntime() -> None:
    """channels_last is a torch memory format: the reference matrix has it on torch backends only."""
    matrix = load_matrix(REPO / "perf" / "matrix.toml")
    backends = {c.backend for c in matrix.cases if c.technique == "channels_last"}
    assert "torch_cpu" in backends and "onnxruntime_cpu" not in backends
    reasons = {e.combination: e.reason for e in matrix.excluded}
    assert (
        reasons["digits_resnet-channels_last-onnxruntime_cpu"]
        == "channels_last means nothing to onnxruntime_cpu"
    )


def test_physical_cores_counts_smt_siblings_once() -> None:
    cpuinfo = "\n\n".join(f"processor\t: {cpu}\nphysical id\t: 0\ncore id\t\t: {cpu % 2}" for cpu in range(4))
    assert physical_cores(cpuinfo, {0, 1, 2, 3}) == 2
    assert physical_cores(cpuinfo, {0}) == 1
    assert physical_cores("", {0, 1, 2}) == 3  # no topology: every allowed CPU counts


THREADS_MATRIX = """
pythonpath = ["{tests}"]
[threads]
intra_op = 1
inter_op = 1
[timing]
warmup_rounds = 2
warmup_time_s = 0.0
min_rounds = 10
min_time_s = 0.01
[models.tiny_mlp]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"
[techniques.fp32]
[techniques.threads_tuned]
[techniques.prune_unstructured]
[backends.torch_cpu]
"""


def test_threads_tuned_and_sparsity_are_recorded(perf_project: pytest.Pytester) -> None:
    """threads_tuned runs with intra-op = physical cores (fp32 with the matrix's 1), and a pruned
    case records its sparsity with its settings."""
    tests = Path(__file__).parent.as_posix()
    (perf_project.path / "perf" / "matrix.toml").write_text(THREADS_MATRIX.format(tests=tests))
    perf_project.runpytest("perf", "--perf-report", "out").assert_outcomes(passed=3)
    cases = {
        c["technique"]: c
        for c in json.loads((perf_project.path / "out" / "results.json").read_text())["cases"]
    }
    expected = min(physical_cores(), len(__import__("os").sched_getaffinity(0)))
    assert cases["threads_tuned"]["settings"]["intra_op_threads"] == expected
    assert cases["fp32"]["settings"]["intra_op_threads"] == 1
    assert cases["prune_unstructured"]["settings"]["weight_sparsity"] == pytest.approx(0.5, abs=0.01)
