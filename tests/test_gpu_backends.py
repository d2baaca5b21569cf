"""The GPU backends: generated with their markers, skipped with a reason here, real on a GPU runner.

On a machine without CUDA every GPU case is skipped at collection with a one-line reason; the pure
parts (engine cache key, batch profile, launch-overhead flag, device-timer hook) are tested with
literal numbers. The tests marked ``needs_cuda`` build, load and run each GPU backend for real
against torch on the CPU; they exist so that a GPU runner runs them, and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from perfgate.backends import BACKENDS, BuildRequest, RunSettings, predict
from perfgate.backends.tensorrt import batch_profile, engine_cache_key
from perfgate.cache import ArtifactCache
from perfgate.calibration import Calibration
from perfgate.cuda_timing import (
    REMEDY_COPIES,
    REMEDY_LAUNCH,
    copies_timed,
    launch_overhead_flag,
    record_device_timing,
)
from perfgate.data import ModelData
from perfgate.matrix import load_matrix
from perfgate.memory import gpu_peak_memory
from perfgate.timing import timed_step

TESTS = Path(__file__).parent
GPU_BACKENDS = {
    "torch_cuda": "torch",
    "torch_compile_cuda": "torch",
    "torch_compile_cuda_reduce_overhead": "torch",
    "torch_compile_cuda_max_autotune": "torch",
    "torch_cuda_graphs": "torch",
    "onnxruntime_cuda": "onnxruntime",
    "onnxruntime_tensorrt": "tensorrt",
    "tensorrt": "tensorrt",
}
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (runs on a GPU runner)")

GPU_MATRIX = """
pythonpath = ["{tests}"]
batch_sizes = [1]

[models.tiny_mlp]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"

[techniques.fp32]

[backends.torch_cpu]
{backends}
"""


@pytest.fixture
def gpu_project(perf_project: pytest.Pytester) -> pytest.Pytester:
    """The tiny project with every GPU backend in its matrix, next to torch_cpu."""
    backends = "\n".join(f"[backends.{name}]" for name in GPU_BACKENDS)
    matrix = GPU_MATRIX.format(tests=TESTS.as_posix(), backends=backends)
    (perf_project.path / "perf" / "matrix.toml").write_text(textwrap.dedent(matrix))
    return perf_project


def test_every_gpu_case_carries_gpu_and_its_backend_marker(tmp_path: Path) -> None:
    """Each GPU backend yields a case marked gpu and with its backend marker, never cpu."""
    backends = "\n".join(f"[backends.{name}]" for name in GPU_BACKENDS)
    path = tmp_path / "matrix.toml"
    path.write_text(GPU_MATRIX.format(tests=TESTS.as_posix(), backends=backends))
    cases = {case.backend: case for case in load_matrix(path).cases}
    assert set(cases) == {"torch_cpu", *GPU_BACKENDS}
    for name, marker in GPU_BACKENDS.items():
        assert {"gpu", marker} <= set(cases[name].markers) and "cpu" not in cases[name].markers, name
        assert cases[name].device == "cuda"
    compiled = {name for name, case in cases.items() if "compiled" in case.markers}
    assert compiled == {"torch_compile_cuda", "torch_compile_cuda_reduce_overhead",
                        "torch_compile_cuda_max_autotune", "torch_cuda_graphs"}  # fmt: skip


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU runner the GPU cases run instead of skipping")
def test_gpu_cases_are_skipped_with_their_reason_without_cuda(gpu_project: pytest.Pytester) -> None:
    """`pytest perf -m gpu` on a CPU-only machine exits 0, every case skipped, naming what is missing."""
    result = gpu_project.runpytest("perf", "-m", "gpu", "-rs")
    assert result.ret == 0
    result.assert_outcomes(skipped=len(GPU_BACKENDS))  # torch_cpu deselected, every GPU case skipped
    result.stdout.fnmatch_lines([f"SKIPPED*{name}: no CUDA device*" for name in GPU_BACKENDS])


def test_engine_cache_key_follows_gpu_tensorrt_and_model() -> None:
    """An engine is keyed by GPU model, compute capability, TensorRT version and model hash."""
    base = {
        "gpu_name": "NVIDIA H200",
        "compute_capability": "9.0",
        "tensorrt_version": "10.7.0",
        "model_hash": "0123456789abcdef0123",
        "lowering": "fp16",
        "profile": (1, 8, 8),
    }
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base)  # stable
    for field, other in [
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", "8.0"),
        ("tensorrt_version", "10.8.0"),
        ("model_hash", "ffffffffffffffffffff"),
        ("lowering", "none"),
        ("profile", (1, 1, 8)),
    ]:
        assert engine_cache_key(**{**base, field: other}) != key, field


def test_batch_profile_defaults_to_the_case_batch_and_widens_on_request() -> None:
    """(1, batch, batch) by default; trt_min_batch / trt_max_batch widen it; nonsense is refused."""
    assert batch_profile(8, {}) == (1, 8, 8)
    assert batch_profile(8, {"trt_min_batch": 1, "trt_max_batch": 32}) == (1, 8, 32)
    with pytest.raises(ValueError, match="trt_max_batch"):
        batch_profile(8, {"trt_max_batch": 4})


def test_launch_overhead_flag_with_literal_numbers() -> None:
    """Device time under half the host time flags the case, with the remedy for its cause."""
    assert launch_overhead_flag(0.9e-3, 1.0e-3, False) == {
        "device_share": 0.9,
        "gpu_bound_by": "device",
        "gpu_remedy": None,
    }
    launch = launch_overhead_flag(0.05e-3, 0.5e-3, False)
    assert launch == {"device_share": 0.1, "gpu_bound_by": "launch overhead", "gpu_remedy": REMEDY_LAUNCH}
    assert "CUDA graph" in REMEDY_LAUNCH and "larger batch" in REMEDY_LAUNCH
    copies = launch_overhead_flag(0.2e-3, 1.0e-3, True)
    assert copies == {"device_share": 0.2, "gpu_bound_by": "copies", "gpu_remedy": REMEDY_COPIES}
    assert launch_overhead_flag(0.5e-3, 1.0e-3, False)["gpu_bound_by"] == "device"  # the boundary


class RecordedTimer:
    """A device timer with fixed device times: the GPU-side events cannot run on this machine."""

    def __init__(self, device_s: list[float], calls: list[str] | None = None) -> None:
        self.device_s = device_s
        self.calls = calls if calls is not None else []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def samples_s(self) -> list[float]:
        return list(self.device_s)


def test_timed_step_records_events_around_the_run_before_the_sync() -> None:
    """With a device timer the step is start, run, stop, sync: the events bracket only the run."""
    calls: list[str] = []
    step = timed_step(
        lambda: calls.append("run"), lambda: calls.append("sync"), True, RecordedTimer([], calls)
    )
    step()
    assert calls == ["start", "run", "stop", "sync"]


def test_record_device_timing_uses_the_timed_rounds_only() -> None:
    """Warmup calls come first in the timer; the last len(host) device times are the timed ones."""
    warmup, timed = [9e-3] * 5, [0.1e-3, 0.1e-3, 0.3e-3]
    timing = record_device_timing(RecordedTimer(warmup + timed), [1e-3, 1e-3, 1e-3], False)  # type: ignore[arg-type]
    assert timing is not None
    assert timing.device_time["rounds"] == 3
    assert timing.device_time["p50_ms"] == pytest.approx(0.1)
    assert timing.host_p50_ms == pytest.approx(1.0)
    assert timing.gpu_bound_by == "launch overhead" and timing.device_share == pytest.approx(0.1)


def test_copies_timed_is_an_explicit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off by default; the technique option wins over PERFGATE_COPIES_TIMED."""
    monkeypatch.delenv("PERFGATE_COPIES_TIMED", raising=False)
    assert copies_timed({}) is False
    monkeypatch.setenv("PERFGATE_COPIES_TIMED", "1")
    assert copies_timed({}) is True
    assert copies_timed({"copies_timed": False}) is False


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only answer")
def test_gpu_memory_is_empty_without_cuda() -> None:
    """No CUDA in the process: no GPU memory fields, and CUDA is never initialised to find out."""
    assert gpu_peak_memory() == {}


# ---- real runs, on a GPU runner only ----------------------------------------------------------


class SmallCNN(torch.nn.Module):
    """Conv, BatchNorm, pooling and a linear head: the kernels every GPU backend must handle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _request(tmp_path: Path, lowering: str, batch: int = 4) -> BuildRequest:
    rng = np.random.default_rng(0)
    data = ModelData(
        name="gpu-test",
        eval_inputs=rng.standard_normal((16, 1, 8, 8)).astype(np.float32),
        train_inputs=rng.standard_normal((64, 1, 8, 8)).astype(np.float32),
    )
    return BuildRequest(
        case_id=f"small_cnn-{lowering}-b{batch}",
        model=SmallCNN().eval(),
        model_key=f"small-cnn-test-{lowering}",
        lowering=lowering,
        options={},
        calibration=Calibration(method="entropy", size=64, batch_size=16),
        data=data,
        batch_size=batch,
        cache=ArtifactCache(tmp_path / "cache"),
    )


CASES = [(name, "none", 1e-4) for name in GPU_BACKENDS] + [
    ("torch_cuda", "fp16", 5e-2),
    ("torch_cuda", "bf16", 2e-1),
    ("torch_cuda_graphs", "fp16", 5e-2),
    ("onnxruntime_tensorrt", "fp16", 5e-2),
    ("tensorrt", "fp16", 5e-2),
]


@needs_cuda
@pytest.mark.parametrize(("backend", "lowering", "tolerance"), CASES, ids=[f"{b}-{lo}" for b, lo, _ in CASES])
def test_gpu_backend_matches_torch_cpu(tmp_path: Path, backend: str, lowering: str, tolerance: float) -> None:
    """Build, load and run each GPU backend; its outputs match torch on the CPU, with device timing."""
    impl = BACKENDS.get(backend)
    if impl.missing():
        pytest.skip(impl.missing() or "")
    request = _request(tmp_path, lowering)
    artifact = impl.build(request)
    session = impl.load(artifact, request, RunSettings())
    try:
        outputs = predict(session, request.data.eval_inputs, request.batch_size)
        with torch.inference_mode():
            reference = request.model(torch.from_numpy(request.data.eval_inputs)).numpy()
        assert np.max(np.abs(outputs - reference)) <= tolerance
        timer = session.device_timer  # type: ignore[attr-defined]
        step = timed_step(session.run, session.synchronize, session.needs_sync, timer)
        for _ in range(5):
            step()
        assert len(timer.samples_s()) >= 5 and all(s > 0 for s in timer.samples_s()[-5:])
    finally:
        session.close()


@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="needs TensorRT")
def test_tensorrt_int8_calibrated_engine_keeps_top1(tmp_path: Path) -> None:
    """The INT8 engine, calibrated on the calibration set, agrees with FP32 on most predictions."""
    impl = BACKENDS.get("tensorrt")
    request = _request(tmp_path, "int8_static", batch=4)
    session = impl.load(impl.build(request), request, RunSettings())
    try:
        outputs = predict(session, request.data.eval_inputs, request.batch_size)
        with torch.inference_mode():
            reference = request.model(torch.from_numpy(request.data.eval_inputs)).numpy()
        assert np.mean(outputs.argmax(1) == reference.argmax(1)) >= 0.8
    finally:
        session.close()
