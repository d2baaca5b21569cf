"""``Backend.inspect``: what each backend's lowering really quantized, on real artifacts.

Every count comes from an artifact the backend builds for real (torch.ao modules, an ONNX graph,
an OpenVINO IR, a ``.tflite``) from a tiny model. The models are seeded but not trained: which
layers a lowering quantizes depends on the architecture, not on the weights' values, and the
untrained models keep each case to a few seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TinyMLP, blobs
from torch import nn

from perfgate.backends import BACKENDS, Artifact, Backend, BuildRequest, RunSettings
from perfgate.cache import ArtifactCache
from perfgate.calibration import Calibration
from perfgate.data import ModelData
from perfgate.models import model_fingerprint
from perfgate.techniques import TECHNIQUES, TransformContext

CALIBRATION = Calibration(method="minmax", size=32)


class SmallCNN(nn.Module):
    """Conv + BN + ReLU, Conv + ReLU, global pooling, a linear head: three weighted layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallGRU(nn.Module):
    """A one-layer GRU over (N, T, F) sequences, a linear head on its last step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(6, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def random_data(name: str, shape: tuple[int, ...]) -> ModelData:
    """Unlabelled normal inputs of ``shape`` per sample; the second half is the calibration set."""
    inputs = np.random.default_rng(0).normal(size=(64, *shape)).astype(np.float32)
    return ModelData(name, inputs[:32], calibration=inputs[32:])


MODELS = {
    "mlp": (TinyMLP, blobs),
    "cnn": (SmallCNN, lambda: random_data("images", (1, 8, 8))),
    "gru": (SmallGRU, lambda: random_data("sequences", (5, 6))),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ArtifactCache:
    """One cache for the module: the lowerings of a model share its ONNX export."""
    return ArtifactCache(tmp_path_factory.mktemp("op-counts"))


def make_request(cache: ArtifactCache, model_name: str, lowering: str) -> BuildRequest:
    """A batch-1 build request for the seeded, untrained ``model_name`` under ``lowering``."""
    build, data = MODELS[model_name]
    torch.manual_seed(0)
    model = build().eval()
    return BuildRequest(
        f"{model_name}-{lowering}", model, model_fingerprint(model), lowering, {}, data(), 1, cache,
        RunSettings(1, 1), calibration=CALIBRATION,
    )  # fmt: skip


def counts(backend_name: str, request: BuildRequest) -> dict[str, int]:
    """Build the request on the backend and inspect the artifact."""
    backend = BACKENDS.get(backend_name)
    # litert-torch prints its conversion progress on stdout; it says nothing about the counts.
    with contextlib.redirect_stdout(io.StringIO()):
        artifact = backend.build(request)
    return backend.inspect(artifact)


def expect(quantized: int, floating: int) -> dict[str, int]:
    return {"quantized_ops": quantized, "float_ops": floating}


@pytest.mark.parametrize(
    ("backend", "model", "lowering", "expected"),
    [
        ("torch_cpu", "mlp", "none", expect(0, 3)),
        ("torch_cpu", "mlp", "int8_dynamic", expect(3, 0)),
        ("torch_cpu", "mlp", "int8_static", expect(3, 0)),
        ("torch_cpu", "mlp", "bf16", expect(0, 3)),
        ("torch_cpu", "cnn", "none", expect(0, 3)),
        # torch's quantize_dynamic handles Linear, LSTM and GRU only: both convs stay float.
        ("torch_cpu", "cnn", "int8_dynamic", expect(1, 2)),
        ("torch_cpu", "cnn", "int8_static", expect(3, 0)),  # two ConvReLU2d and the Linear
        ("onnxruntime_cpu", "mlp", "none", expect(0, 3)),
        ("onnxruntime_cpu", "mlp", "int8_dynamic", expect(3, 0)),  # MatMulInteger
        ("onnxruntime_cpu", "mlp", "int8_static", expect(3, 0)),  # Gemm on DequantizeLinear weights
        ("onnxruntime_cpu", "mlp", "fp16", expect(0, 3)),
        ("onnxruntime_cpu", "cnn", "none", expect(0, 3)),
        ("onnxruntime_cpu", "cnn", "int8_dynamic", expect(3, 0)),  # ONNX Runtime's does conv (ConvInteger)
        ("onnxruntime_cpu", "cnn", "int8_static", expect(3, 0)),
    ],
)
def test_torch_and_onnxruntime_count_what_the_lowering_quantized(
    cache: ArtifactCache, backend: str, model: str, lowering: str, expected: dict[str, int]
) -> None:
    """FP32 has no quantized op; INT8 counts every layer it quantized and every one it left float."""
    assert counts(backend, make_request(cache, model, lowering)) == expected


@pytest.mark.parametrize(
    ("backend", "lowering", "expected"),
    [
        ("torch_cpu", "none", expect(0, 2)),
        # torch's dynamic quantization has a GRU kernel: the whole model is INT8.
        ("torch_cpu", "int8_dynamic", expect(2, 0)),
        # FX static quantization has no static GRU: only the head is INT8.
        ("torch_cpu", "int8_static", expect(1, 1)),
        ("onnxruntime_cpu", "none", expect(0, 2)),  # one GRU node, one Gemm
        # ONNX Runtime's dynamic quantizer has an LSTM kernel (DynamicQuantizeLSTM) but none for
        # GRU: the GRU node stays float, only the head becomes MatMulInteger. This is the "INT8"
        # that silently does nothing to the layer that costs the most.
        ("onnxruntime_cpu", "int8_dynamic", expect(1, 1)),
        ("onnxruntime_cpu", "int8_static", expect(1, 1)),  # likewise: no Q/DQ around the GRU
    ],
)
def test_gru_stays_float_where_the_quantizer_has_no_gru(
    cache: ArtifactCache, backend: str, lowering: str, expected: dict[str, int]
) -> None:
    """A GRU the lowering cannot quantize is counted float, next to its quantized linear head."""
    assert counts(backend, make_request(cache, "gru", lowering)) == expected


@pytest.mark.parametrize(
    ("model", "lowering", "expected"),
    [
        ("cnn", "none", expect(0, 3)),
        ("cnn", "fp16", expect(0, 3)),  # f16 constants decompressed to f32: float
        ("cnn", "int8_static", expect(3, 0)),  # NNCF's INT8 weights (i8 constant, Convert, Multiply)
        # NNCF quantizes the head's MatMul; the GRUSequence keeps f32 weights.
        ("gru", "int8_static", expect(1, 1)),
    ],
)
def test_openvino_counts_int8_weights(
    cache: ArtifactCache, model: str, lowering: str, expected: dict[str, int]
) -> None:
    """OpenVINO's IR: ops fed by INT8 weights or FakeQuantize are quantized, f32/f16 ones float."""
    pytest.importorskip("openvino")
    if lowering == "int8_static":
        pytest.importorskip("nncf")
    assert counts("openvino_cpu", make_request(cache, model, lowering)) == expected


@pytest.mark.parametrize(
    ("model", "lowering", "expected"),
    [
        ("mlp", "none", expect(0, 3)),
        ("mlp", "int8_dynamic", expect(3, 0)),
        ("mlp", "int8_static", expect(3, 0)),
        ("mlp", "fp16", expect(0, 3)),  # FP16 weights DEQUANTIZE'd to float32: float
        ("cnn", "none", expect(0, 3)),  # the 1-channel stem converts to DEPTHWISE_CONV_2D
        ("cnn", "int8_dynamic", expect(3, 0)),
        ("cnn", "int8_static", expect(3, 0)),
        # The converter unrolls the GRU: one FULLY_CONNECTED projects the input of all 5 steps,
        # one per step projects the hidden state but the first (h0 = 0 folds away), so 1 + 4,
        # and the head: 6, all INT8 under the dynamic-range recipe. (Static INT8 of this GRU does
        # not convert: litert-torch's GRU annotator wants an explicit h0.)
        ("gru", "none", expect(0, 6)),
        ("gru", "int8_dynamic", expect(6, 0)),
    ],
)
def test_litert_counts_int8_weights(
    cache: ArtifactCache, model: str, lowering: str, expected: dict[str, int]
) -> None:
    """LiteRT's flatbuffer: compute ops on INT8 weight tensors are quantized, FP32/FP16 ones float."""
    pytest.importorskip("litert_torch")
    if not any(importlib.util.find_spec(m) for m in ("ai_edge_litert", "tflite_runtime")):
        pytest.skip("no LiteRT interpreter installed")
    assert counts("litert_cpu", make_request(cache, model, lowering)) == expected


def test_qat_artifacts_count_as_quantized(cache: ArtifactCache) -> None:
    """The QAT model is INT8 everywhere: converted modules, the exported QDQ graph, FakeQuantize IR."""
    request = make_request(cache, "mlp", "none")
    qat = TECHNIQUES.get("qat")
    options = {**qat.default_options, "epochs": 1, "frozen_epochs": 0, "max_shift": 0}
    ctx = TransformContext("mlp", request.model_key, request.data, cache, options, lambda line: None)
    model = qat.transform(request.model, ctx)
    request = dataclasses.replace(
        request,
        model=model,
        model_key=f"{request.model_key}-{qat.transform_key(options)}",
        lowering=qat.lowering,
    )
    backends = ["torch_cpu", "onnxruntime_cpu"]
    backends += ["openvino_cpu"] if importlib.util.find_spec("openvino") else []
    assert {name: counts(name, request) for name in backends} == dict.fromkeys(backends, expect(3, 0))


def test_torch_compile_counts_the_module_it_compiled(cache: ArtifactCache) -> None:
    """torch.compile's artifact reports the modules inductor compiled: all float (``none`` only)."""
    assert counts("torch_compile_cpu", make_request(cache, "mlp", "none")) == expect(0, 3)


def test_a_backend_without_inspect_reports_unknown() -> None:
    """The base verb answers ``{}``: a backend that cannot tell says nothing rather than zero."""

    class Opaque(Backend):
        name = "opaque"

    assert Opaque().inspect(Artifact(Path("model.bin"), 0, 0.0, cached=False)) == {}
