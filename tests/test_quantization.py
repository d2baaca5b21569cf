"""INT8 (static, QAT) and reduced-precision lowerings, run for real on torch and ONNX Runtime.

Each test builds the artifact a case would build, checks that it really is quantized (or cast),
and judges it with the technique's own default tolerances through the accuracy gates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import TinyMLP, blobs
from torch import nn

from perfgate import ModelContext, ModelData, TrainConfig, train_classifier
from perfgate.accuracy import AccuracyResult, Fidelity, top1
from perfgate.backends import BACKENDS, Artifact, BuildRequest, RunSettings, predict
from perfgate.cache import ArtifactCache
from perfgate.calibration import Calibration
from perfgate.gates import AccuracyPolicy, accuracy_verdicts
from perfgate.hardware import Hardware, detect
from perfgate.models import model_fingerprint
from perfgate.techniques import TECHNIQUES, TransformContext
from perfgate.validation import SettingError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def stripes() -> ModelData:
    """1x12x12 images: four stripe orientations under noise, a task a tiny CNN learns at once."""
    rng = np.random.default_rng(1)
    grid = np.arange(12, dtype=np.float32)
    patterns = np.stack([
        np.sin(grid)[None, :].repeat(12, 0), np.sin(grid)[:, None].repeat(12, 1),
        np.sin(grid[:, None] + grid[None, :]), np.sin(grid[:, None] - grid[None, :]),
    ])  # fmt: skip
    labels = rng.integers(0, 4, size=700).astype(np.int64)
    inputs = (patterns[labels] + rng.normal(0, 0.6, size=(700, 12, 12))).astype(np.float32)[:, None]
    return ModelData("stripes", inputs[:200], labels[:200], inputs[200:], labels[200:])


class TinyCNN(nn.Module):
    """Conv + BN + ReLU6 (the MobileNet pattern), a residual add, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"mlp": (TinyMLP, blobs), "cnn": (TinyCNN, stripes)}


class Trained:
    """A trained tiny model with its data, cache and FP32 reference outputs."""

    def __init__(self, name: str, cache: ArtifactCache) -> None:
        build, loader = MODELS[name]
        self.name, self.data, self.cache = name, loader(), cache
        ctx = ModelContext(name, self.data, cache, {}, lambda line: None)
        self.module = train_classifier(build, ctx, TrainConfig(epochs=6, max_shift=0))
        self.key = model_fingerprint(self.module)
        with torch.inference_mode():
            self.reference = self.module(torch.from_numpy(self.data.eval_inputs)).numpy()

    def build(self, technique: str, backend: str, **options: Any) -> tuple[Artifact, np.ndarray]:
        """Transform, lower and run the eval set as a case of ``technique`` on ``backend`` would."""
        tech = TECHNIQUES.get(technique)
        options = {**tech.default_options, **options}
        ctx = TransformContext(self.name, self.key, self.data, self.cache, options, lambda line: None)
        model = tech.transform(self.module, ctx)
        extra = tech.transform_key(options)
        request = BuildRequest(
            f"{self.name}-{technique}-{backend}", model, self.key if extra is None else f"{self.key}-{extra}",
            tech.lowering, options, self.data, 8, self.cache, calibration=tech.calibration(options),
        )  # fmt: skip
        artifact = BACKENDS.get(backend).build(request)
        session = BACKENDS.get(backend).load(artifact, request, RunSettings(1, 1))
        try:
            return artifact, predict(session, self.data.eval_inputs, 8)
        finally:
            session.close()

    def assert_within_defaults(self, technique: str, outputs: np.ndarray) -> None:
        """The technique's default tolerances hold, judged by perfgate's own accuracy gates."""
        labels = self.data.eval_labels
        result = AccuracyResult("top1", top1(outputs, labels), top1(self.reference, labels),
                                Fidelity.compare(self.reference, outputs), len(outputs))  # fmt: skip
        policy = AccuracyPolicy().merged(TECHNIQUES.get(technique).accuracy)
        failed = [v.message for v in accuracy_verdicts(result, policy) if v.failed]
        assert not failed, f"{self.name} {technique}: {failed}"


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest, shared_cache: Path) -> Trained:
    return Trained(request.param, ArtifactCache(shared_cache))


@pytest.fixture(scope="module")
def cnn(shared_cache: Path) -> Trained:
    return Trained("cnn", ArtifactCache(shared_cache))


def onnx_graph(artifact: Artifact) -> Any:
    return onnx.load(str(artifact.path)).graph


def quantized_torch_modules(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if ".quantized" in type(m).__module__}


@pytest.mark.parametrize("technique", ["int8_static", "int8_static_entropy", "int8_static_percentile"])
def test_static_int8_torch_is_int8_and_accurate(trained: Trained, technique: str) -> None:
    """FX static INT8 turns every linear and conv into a quantized module and keeps the defaults."""
    artifact, outputs = trained.build(technique, "torch_cpu")
    kinds = quantized_torch_modules(artifact.payload)
    assert "Linear" in kinds
    assert trained.name != "cnn" or {"ConvReLU2d", "Conv2d"} & kinds  # conv + BN + ReLU(6) fused
    assert not any(type(m) in {nn.Linear, nn.Conv2d} for m in artifact.payload.modules())
    trained.assert_within_defaults(technique, outputs)


@pytest.mark.parametrize("technique", ["int8_static", "int8_static_entropy", "int8_static_percentile"])
def test_static_int8_onnxruntime_is_qdq_and_accurate(trained: Trained, technique: str) -> None:
    """quantize_static writes a QDQ graph with INT8 weights and keeps the defaults."""
    artifact, outputs = trained.build(technique, "onnxruntime_cpu")
    graph = onnx_graph(artifact)
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert int8, "no INT8 weight initializer"
    names = {t.name for t in int8}
    assert any(n.op_type == "DequantizeLinear" and n.input[0] in names for n in graph.node)
    trained.assert_within_defaults(technique, outputs)


def _activation_scales(graph: Any) -> dict[str, float]:
    scalars = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if not t.dims}
    return {n.input[1]: float(scalars[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in scalars}  # fmt: skip


def test_calibration_method_changes_the_scales(cnn: Trained) -> None:
    """Percentile calibration clips the ranges MinMax keeps (both backends); entropy searches its own.

    ONNX Runtime's entropy (KL) search may keep the full range on a small, light-tailed model,
    so entropy is compared on torch, whose histogram search always narrows it.
    """
    onnx_scales = [_activation_scales(onnx_graph(cnn.build(t, "onnxruntime_cpu")[0]))
                   for t in ("int8_static", "int8_static_percentile")]  # fmt: skip
    assert onnx_scales[0] and onnx_scales[0] != onnx_scales[1]
    torch_scales = [
        sorted(float(m.scale) for m in cnn.build(t, "torch_cpu")[0].payload.modules()
               if isinstance(getattr(m, "scale", None), float))
        for t in ("int8_static", "int8_static_entropy", "int8_static_percentile")
    ]  # fmt: skip
    assert torch_scales[0] and torch_scales[0] != torch_scales[1] and torch_scales[0] != torch_scales[2]


def test_calibration_size_option_changes_the_result(cnn: Trained) -> None:
    """The calibration size is an option, and a different size is a different (cached) artifact."""
    small, _ = cnn.build("int8_static", "onnxruntime_cpu", calibration={"method": "minmax", "size": 16})
    full, _ = cnn.build("int8_static", "onnxruntime_cpu")
    assert small.path != full.path
    assert _activation_scales(onnx_graph(small)) != _activation_scales(onnx_graph(full))


def test_calibration_options_are_validated() -> None:
    """An unknown method or key is refused with the valid choices named."""
    with pytest.raises(SettingError, match="minmax, entropy, percentile"):
        Calibration.from_options({"calibration": {"method": "kl"}})
    with pytest.raises(SettingError, match=r"calibration\.samples = 10: unknown calibration key"):
        Calibration.from_options({"calibration": {"samples": 10}})
    assert Calibration.from_options({}).method == "minmax"


def test_a_backend_calibrates_from_the_request_not_the_options(cnn: Trained) -> None:
    """The request's parsed calibration is what a backend uses; its raw options are not read again."""
    tech = TECHNIQUES.get("int8_static")
    request = BuildRequest(
        "cnn-int8_static-onnxruntime_cpu", cnn.module, cnn.key, tech.lowering,
        {"calibration": {"method": "no such method"}}, cnn.data, 8, cnn.cache,
        calibration=Calibration(size=16),
    )  # fmt: skip
    artifact = BACKENDS.get("onnxruntime_cpu").build(request)
    small, _ = cnn.build("int8_static", "onnxruntime_cpu", calibration={"method": "minmax", "size": 16})
    assert artifact.path == small.path
    with pytest.raises(ValueError, match=r"needs BuildRequest\.calibration"):
        BACKENDS.get("onnxruntime_cpu").build(dataclasses.replace(request, calibration=None))


def test_qat_lowers_to_int8_on_torch_and_qdq_on_onnxruntime(trained: Trained) -> None:
    """The QAT model converts to INT8 modules in torch and exports to a validated QDQ graph."""
    artifact, outputs = trained.build("qat", "torch_cpu")
    assert "Linear" in quantized_torch_modules(artifact.payload)
    trained.assert_within_defaults("qat", outputs)
    artifact, outputs = trained.build("qat", "onnxruntime_cpu")
    graph = onnx_graph(artifact)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert not {"BatchNormalization", "Div"} & {node.op_type for node in graph.node}  # BN folded
    report = Path(artifact.info["onnx"]).with_suffix(".validation.json").read_text()
    assert '"fake_quant": true' in report
    trained.assert_within_defaults("qat", outputs)


def test_fp16_onnxruntime_has_fp16_weights_and_fp32_io(cnn: Trained) -> None:
    """The FP16 graph stores FP16 weights, keeps FP32 inputs and outputs, and stays within defaults."""
    artifact, outputs = cnn.build("fp16", "onnxruntime_cpu")
    graph = onnx_graph(artifact)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert outputs.dtype == np.float32
    cnn.assert_within_defaults("fp16", outputs)


def test_bf16_torch_computes_in_bf16(cnn: Trained) -> None:
    """The torch BF16 module holds BF16 weights, returns FP32 and stays within defaults."""
    reason = TECHNIQUES.get("bf16").missing(detect(), "cpu")
    if reason:
        pytest.skip(reason)
    artifact, outputs = cnn.build("bf16", "torch_cpu")
    assert {p.dtype for p in artifact.payload.parameters()} == {torch.bfloat16}
    assert outputs.dtype == np.float32
    cnn.assert_within_defaults("bf16", outputs)


def test_bf16_is_skipped_on_a_cpu_without_the_instructions() -> None:
    """BF16 on a CPU backend names the missing instructions; FP16 and GPU backends are not affected."""
    plain = Hardware(cpu_model="Old CPU", cpu_cores=2, machine="x86_64", isa=("avx2",))
    bf16 = TECHNIQUES.get("bf16")
    reason = bf16.missing(plain, "cpu")
    assert reason is not None and "avx512_bf16" in reason and "avx2" in reason
    empty = Hardware("Empty", 2, "x86_64", ())
    assert bf16.missing(empty, "cpu").endswith("(this CPU has: none detected)")
    assert bf16.missing(Hardware("New CPU", 2, "x86_64", ("avx512_bf16",)), "cpu") is None
    assert bf16.missing(plain, "cuda") is None
    assert TECHNIQUES.get("fp16").missing(plain, "cpu") is None


def test_lowerings_are_generated_only_where_implemented() -> None:
    """torch_cpu has no fp16 lowering and ONNX Runtime's CPU backend no bf16 one."""
    torch_cpu, ort_cpu = BACKENDS.get("torch_cpu"), BACKENDS.get("onnxruntime_cpu")
    assert {"int8_static", "int8_qat", "bf16"} <= torch_cpu.lowerings and "fp16" not in torch_cpu.lowerings
    assert {"int8_static", "int8_qat", "fp16"} <= ort_cpu.lowerings and "bf16" not in ort_cpu.lowerings
