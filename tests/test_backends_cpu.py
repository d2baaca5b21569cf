"""The CPU backends beyond torch eager and ONNX Runtime: OpenVINO, LiteRT and torch.compile.

Each is run for real on the tiny MLP of ``tests/tiny_models.py``: built, loaded and compared
with torch. LiteRT's tests skip when the ``edge`` extra is absent.
"""

from __future__ import annotations

import fnmatch
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import blobs, tiny_mlp

from perfgate.backends import BACKENDS, BuildRequest, RunSettings, predict
from perfgate.cache import ArtifactCache
from perfgate.calibration import Calibration
from perfgate.matrix import load_matrix
from perfgate.models import ModelContext, model_fingerprint

FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.97
ONE_THREAD = RunSettings(intra_op_threads=1, inter_op_threads=1)
CALIBRATION = Calibration(method="minmax", size=128)


@pytest.fixture(scope="module")
def trained(shared_cache: Path) -> tuple[torch.nn.Module, ArtifactCache]:
    """The tiny MLP, trained once (cached) and in eval mode, with the shared artifact cache."""
    cache = ArtifactCache(shared_cache)
    model = tiny_mlp(ModelContext("tiny_mlp", blobs(), cache, {}, lambda line: None)).eval()
    return model, cache


def make_request(
    trained: tuple[torch.nn.Module, ArtifactCache],
    lowering: str,
    calibration: Calibration | None = None,
    batch_size: int = 1,
) -> BuildRequest:
    model, cache = trained
    return BuildRequest(
        case_id=f"tiny_mlp-{lowering}-b{batch_size}",
        model=model,
        model_key=model_fingerprint(model),
        lowering=lowering,
        options={},
        data=blobs(),
        batch_size=batch_size,
        cache=cache,
        run_settings=ONE_THREAD,
        calibration=calibration,
    )


def run_backend(name: str, request: BuildRequest) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Build, load and predict the whole eval set; return the outputs, torch's, and the settings."""
    backend = BACKENDS.get(name)
    session = backend.load(backend.build(request), request, ONE_THREAD)
    try:
        outputs = predict(session, request.data.eval_inputs, request.batch_size)
        settings = dict(session.settings)
    finally:
        session.close()
    with torch.inference_mode():
        reference = request.model(torch.from_numpy(request.data.eval_inputs)).numpy()
    return outputs, reference, settings


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean(outputs.argmax(1) == reference.argmax(1)))


@pytest.mark.parametrize("name", ["openvino_cpu", "openvino_cpu_throughput"])
def test_openvino_fp32_matches_torch(trained, name: str) -> None:
    """OpenVINO's FP32 IR, forced to f32 inference precision, computes what torch computes."""
    pytest.importorskip("openvino")
    outputs, reference, settings = run_backend(name, make_request(trained, "none", batch_size=8))
    assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE
    assert settings["inference_precision"] == "f32"
    assert settings["inference_num_threads"] == 1
    assert settings["performance_hint"] == ("THROUGHPUT" if name.endswith("throughput") else "LATENCY")


def test_openvino_int8_static_keeps_predictions(trained) -> None:
    """NNCF's static INT8, calibrated on the calibration set, keeps torch's top-1 predictions."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    request = make_request(trained, "int8_static", CALIBRATION)
    outputs, reference, settings = run_backend("openvino_cpu", request)
    assert agreement(outputs, reference) >= INT8_MIN_AGREEMENT
    assert settings["nncf_range_estimator"] == "MINMAX"
    assert settings["calibration"]["size"] == 128


def test_openvino_reduced_precision_is_real_or_skipped(trained) -> None:
    """An fp16 case either runs in f16 or skips, naming the precision the CPU would really use."""
    pytest.importorskip("openvino")
    backend = BACKENDS.get("openvino_cpu")
    request = make_request(trained, "fp16")
    artifact = backend.build(request)
    try:
        session = backend.load(artifact, request, ONE_THREAD)
    except pytest.skip.Exception as exc:
        assert str(exc.msg).startswith(
            "tiny_mlp-fp16-b1: this CPU has no f16 arithmetic; OpenVINO would run it in"
        )
        return
    assert session.settings["inference_precision"] == "f16"
    session.close()


@pytest.mark.parametrize(("lowering", "exact"), [("none", True), ("int8_static", False)])
def test_litert_matches_torch(trained, lowering: str, exact: bool) -> None:
    """LiteRT with XNNPACK: FP32 matches torch; full-integer INT8 keeps its predictions."""
    pytest.importorskip("litert_torch")
    outputs, reference, settings = run_backend("litert_cpu", make_request(trained, lowering, CALIBRATION))
    if exact:
        assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE
    else:
        assert agreement(outputs, reference) >= INT8_MIN_AGREEMENT
        assert settings["activation_observer"] == "MinMaxObserver"
    assert settings["xnnpack"] is True
    assert settings["num_threads"] == 1


def test_torch_compile_matches_torch_and_records_compile_time(trained) -> None:
    """Inductor's code matches eager; the compile (with its first call) is the build time."""
    request = make_request(trained, "none", batch_size=4)
    backend = BACKENDS.get("torch_compile_cpu")
    artifact = backend.build(request)
    assert artifact.build_s > 0
    session = backend.load(artifact, request, ONE_THREAD)
    try:
        outputs = predict(session, request.data.eval_inputs, request.batch_size)
        assert "recompiled_for_threads" not in session.settings  # built for the case's threads
    finally:
        session.close()
    with torch.inference_mode():
        reference = request.model(torch.from_numpy(request.data.eval_inputs)).numpy()
    assert np.max(np.abs(outputs - reference)) < FP32_TOLERANCE


def test_torch_compile_cases_carry_the_compiled_marker(tmp_path: Path) -> None:
    """The backend's extra marker reaches every case: ``-m compiled`` selects torch.compile."""
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(
        '[models.m]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\n[techniques.fp32]\n'
        "[backends.torch_compile_cpu]\n[backends.openvino_cpu]\n"
    )
    markers = {case.backend: case.markers for case in load_matrix(matrix).cases}
    assert markers["torch_compile_cpu"] == ("cpu", "torch", "compiled")
    assert markers["openvino_cpu"] == ("cpu", "openvino")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("openvino_cpu", "pip install 'perfgate[cpu]'"),
        ("litert_cpu", "pip install 'perfgate[edge]'"),
        ("torch_compile_cpu", ""),
    ],
)
def test_missing_module_gives_a_one_line_reason(
    monkeypatch: pytest.MonkeyPatch, name: str, hint: str
) -> None:
    """A backend whose module is absent names it, and the extra that brings it, in one line."""
    backend = BACKENDS.get(name)
    monkeypatch.setattr(type(backend), "requires", ("perfgate_absent_module",))
    reason = backend.missing()
    suffix = f" ({hint})" if hint else ""
    assert reason == f"{name}: perfgate_absent_module is not installed{suffix}"


def test_litert_without_a_runtime_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter alone is not enough: with neither interpreter, the reason names both."""
    import perfgate.backends.litert as litert

    monkeypatch.setattr(type(litert.LITERT_CPU), "requires", ())
    monkeypatch.setattr(litert, "RUNTIMES", ("perfgate_absent_runtime",))
    assert litert.LITERT_CPU.missing() == (
        "litert_cpu: ai_edge_litert (or tflite_runtime) is not installed (pip install 'perfgate[edge]')"
    )


E2E_BACKENDS = """
[backends.openvino_cpu]
[backends.openvino_cpu_throughput]
[backends.litert_cpu]
"""
# The -rs line of a LiteRT case skipped for want of the converter, as an fnmatch pattern: "[" opens
# a character class in fnmatch, so the literal "[edge]" is written "[[]edge]".
LITERT_SKIP_LINE = "*litert_cpu: litert_torch is not installed (pip install 'perfgate[[]edge]')*"


def test_e2e_matrix_runs_and_skips_with_reasons(perf_project: pytest.Pytester) -> None:
    """A pytest run of the tiny matrix on these backends: cases pass their gates or skip with a reason."""
    matrix = perf_project.path / "perf" / "matrix.toml"
    text = matrix.read_text()
    text = text.replace("[techniques.int8_dynamic]\n", "").replace(
        "[backends.onnxruntime_cpu]\n", E2E_BACKENDS
    )
    matrix.write_text(text.replace("[backends.torch_cpu]\n", ""))
    result = perf_project.runpytest("perf", "-rs")
    outcomes = result.parseoutcomes()
    expected = {"openvino_cpu", "openvino_cpu_throughput"}
    expected |= {"litert_cpu"} if importlib.util.find_spec("litert_torch") else set()
    assert outcomes.get("passed") == len(expected), result.stdout.str()
    assert outcomes.get("failed", 0) == 0
    if "litert_cpu" not in expected:
        result.stdout.fnmatch_lines([LITERT_SKIP_LINE])


def test_litert_skip_pattern_matches_the_real_skip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """The e2e test's pattern matches the line a run without litert_torch prints, "[edge]" included.

    litert_torch is installed here, so the e2e test never reaches that branch: this makes LiteRT's
    own ``missing()`` believe it is absent and matches its reason as pytest's -rs prints it.
    """
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "litert_torch" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    reason = BACKENDS.get("litert_cpu").missing()
    assert reason is not None
    line = f"SKIPPED [1] perf/test_perf.py:12: {reason}"
    assert fnmatch.fnmatch(line, LITERT_SKIP_LINE)
    # The unescaped pattern is what the e2e test had: "[edge]" is a class of one letter, so it fails.
    assert not fnmatch.fnmatch(line, LITERT_SKIP_LINE.replace("[[]", "["))


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_onnxruntime_calibrates_on_a_set_that_batches_unevenly(trained, method: str) -> None:
    """100 calibration rows in batches of 32 end with a batch of 4: ONNX Runtime's histogram
    calibrators stacked the batches and failed with "inhomogeneous shape" (a user's 124-row wine set)."""
    calibration = Calibration(method=method, size=100)
    outputs, reference, _ = run_backend("onnxruntime_cpu", make_request(trained, "int8_static", calibration))
    assert float(np.mean(outputs.argmax(-1) == reference.argmax(-1))) >= 0.97
