"""A model given as an ONNX file (``kind = "onnx"``): ONNX Runtime on the file is its reference,
the ONNX backends run it under its own names and batch axis, and the graph-level techniques
(static and dynamic INT8, FP16) apply; torch backends and techniques never do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MATRIX_HEADER, write_project
from perfgate.matrix import load_matrix

ONNX_MATRIX = MATRIX_HEADER + """
[threads]
intra_op = 1
inter_op = 1

[models.tiny_onnx]
kind = "onnx"
factory = "tiny_models:tiny_mlp_onnx"
data = "tiny_models:blobs"
metric = "top1"
batch_sizes = [1, 8]

[techniques.fp32]
[techniques.int8_dynamic]
[techniques.int8_static]
[techniques.qat]

[backends.torch_cpu]
[backends.onnxruntime_cpu]
[backends.openvino_cpu]

[[overrides]]
match = "tiny_onnx-int8_static-openvino_cpu-*"
accuracy = {{ require_effect = false }}
reason = "a 16-64-4 MLP: the IR's quantize/dequantize nodes outweigh its INT8 weights"
"""


@pytest.fixture
def onnx_project(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    return write_project(pytester, shared_cache, monkeypatch, ONNX_MATRIX)


def test_an_onnx_file_gets_the_graph_backends_and_techniques(onnx_project: pytest.Pytester) -> None:
    matrix = load_matrix(onnx_project.path / "perf" / "matrix.toml")
    assert sorted(case.id for case in matrix.cases) == sorted(
        f"tiny_onnx-{technique}-{backend}-b{batch}"
        for technique, backend in [
            ("fp32", "onnxruntime_cpu"), ("fp32", "openvino_cpu"), ("int8_dynamic", "onnxruntime_cpu"),
            ("int8_static", "onnxruntime_cpu"), ("int8_static", "openvino_cpu"),
        ]
        for batch in (1, 8)
    )  # fmt: skip
    excluded = {e.combination: e.reason for e in matrix.excluded}
    assert excluded["tiny_onnx-fp32-torch_cpu"] == "torch_cpu runs no onnx model (it runs torch models)"
    assert excluded["tiny_onnx-qat-onnxruntime_cpu"] == "qat applies to no onnx model (only to torch models)"


def test_a_run_judges_every_variant_against_onnx_runtime_on_the_file(onnx_project: pytest.Pytester) -> None:
    result = onnx_project.runpytest("perf", "--perf-report", "out")
    result.assert_outcomes(passed=10)
    document = json.loads((onnx_project.path / "out" / "results.json").read_text())
    cases = {c["case_id"]: c for c in document["cases"]}
    assert {c["model_kind"] for c in cases.values()} == {"onnx"}
    reference = cases["tiny_onnx-fp32-onnxruntime_cpu-b8"]["accuracy"]["fidelity"]
    assert reference["max_abs_diff"] == 0.0  # the reference itself, at another batch: the same outputs
    assert cases["tiny_onnx-int8_static-openvino_cpu-b1"]["accuracy"]["fidelity"]["top1_agreement"] >= 0.97
    report = (onnx_project.path / "out" / "report.md").read_text()
    row = next(
        line for line in report.splitlines() if line.startswith("| `tiny_onnx-fp32-onnxruntime_cpu-b8` |")
    )
    assert "| 1.00x |" in row  # the speedup is over ONNX Runtime on the file, at the same batch size


def test_a_file_perfgate_cannot_feed_is_named_with_the_fix(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper
    from tiny_models import blobs

    from perfgate.backends import BACKENDS, BuildRequest
    from perfgate.backends.onnx_file import OnnxFileError
    from perfgate.cache import ArtifactCache
    from perfgate.model_kinds import MODEL_KINDS, ONNX

    two_outputs = tmp_path / "two.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"])],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 16]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 16])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), str(two_outputs))
    request = BuildRequest(
        "two-fp32-onnxruntime_cpu-b1", str(two_outputs), MODEL_KINDS[ONNX].fingerprint(two_outputs),
        "none", {}, blobs(), 1, ArtifactCache(tmp_path / "cache"), model_kind=ONNX,
    )  # fmt: skip
    with pytest.raises(OnnxFileError) as info:
        BACKENDS.get("onnxruntime_cpu").build(request)
    assert str(info.value) == (
        f"two-fp32-onnxruntime_cpu-b1: {two_outputs} has 1 input(s) (x) and 2 output(s) (a, b); perfgate "
        "feeds one input and reads one output: export the model with one of each"
    )
