"""Measurement fidelity: perfgate's latency next to the vendors' own tools, same model file, same threads.

* OpenVINO: perfgate's ``openvino_cpu`` case (LATENCY hint, ``--threads`` inference threads) against
  ``benchmark_app -m <the same IR> -d CPU -hint none -api sync -infer_precision f32 -nstreams 1
  -nthreads N`` (benchmark_app accepts -nstreams and -nthreads only with -hint none), its
  "Median" latency.
* ONNX Runtime: the wheel ships ``onnxruntime_test`` (``onnxruntime.tools.onnxruntime_test``), not
  ``onnxruntime_perf_test``. It loads the model with default session options (ONNX Runtime then
  picks its own intra-op thread count), runs ``sess.run`` with random feeds, and prints the
  *average* latency, first call included. It is compared with perfgate's ``onnxruntime_cpu`` case
  built with default threads too, on perfgate's mean and p50.

Each tool runs in turn, ``--repeats`` times, alternating, and the median of the repeats is kept.

    python benchmarks/vendor_agreement.py --models resnet18 digits_resnet --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import perfgate  # noqa: E402
from perfgate.execution import CaseRun  # noqa: E402
from perfgate.stats import LatencyStats  # noqa: E402
from perfgate.timing import TimingPolicy, plan_rounds, warm_up  # noqa: E402

BIN = Path(sys.executable).parent
MATRIX = """
pythonpath = ["{repo}"]
batch_sizes = [1]
[models.resnet18]
factory = "fixtures.zoo:resnet18"
data = "fixtures.generated:imagenet_shaped"
[models.digits_resnet]
factory = "fixtures.zoo:digits_resnet"
data = "fixtures.digits:digits"
[techniques.fp32]
[backends.onnxruntime_cpu]
{threads}
[backends.openvino_cpu]
{threads}
"""


def built(model: str, backend: str, threads: int | None) -> CaseRun:
    """The case built and loaded the way ``pytest perf`` does it."""
    folder = Path(tempfile.mkdtemp())
    table = f"threads = {{ intra_op = {threads} }}" if threads else ""
    (folder / "matrix.toml").write_text(MATRIX.format(repo=REPO.as_posix(), threads=table))
    cache = Path(os.environ.get("PERFGATE_CACHE", REPO / ".perfgate_cache"))
    return perfgate.build_case(folder / "matrix.toml", f"{model}-fp32-{backend}-b1", root=folder, cache=cache)


def perfgate_latency(case: CaseRun, seconds: float) -> LatencyStats:
    """perfgate's own timing path: warm up, plan rounds, time the bound ``run`` per call."""
    assert case.runtime is not None and case.model is not None
    case.runtime.bind(case.model.data.example(1))
    policy = TimingPolicy(min_time_s=seconds, max_time_s=4 * seconds)
    rounds = plan_rounds(warm_up(case.runtime.run, policy), policy)
    samples = []
    import time

    for _ in range(rounds):
        start = time.perf_counter()
        case.runtime.run()
        samples.append(time.perf_counter() - start)
    return LatencyStats.from_samples(samples)


def benchmark_app_median_ms(model_path: Path, shape: tuple[int, ...], threads: int, seconds: float) -> float:
    command = [
        str(BIN / "benchmark_app"), "-m", str(model_path), "-d", "CPU", "-hint", "none", "-api", "sync", "-infer_precision", "f32",
        "-nstreams", "1", "-nthreads", str(threads), "-shape", f"input[{','.join(map(str, shape))}]", "-t", str(int(max(1, seconds))),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"Median:\s+([\d.]+) (ms|us)", out).groups()  # type: ignore[union-attr]
    return float(value) / (1000.0 if unit == "us" else 1.0)


def onnxruntime_test_mean_ms(model_path: Path, iterations: int) -> float:
    command = [str(BIN / "onnxruntime_test"), str(model_path), str(iterations)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"avg latency:\s+([\d.]+) ms", out).group(1))  # type: ignore[union-attr]


def compare_openvino(model: str, threads: int, seconds: float, repeats: int) -> str:
    case = built(model, "openvino_cpu", threads)
    assert case.artifact is not None and case.model is not None
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(perfgate_latency(case, seconds).p50_ms)
        theirs.append(
            benchmark_app_median_ms(case.artifact.path, case.model.data.example(1).shape, threads, seconds)
        )
    case.close()
    a, b = float(np.median(ours)), float(np.median(theirs))
    return f"| {model} | OpenVINO, {threads} thread(s) | perfgate p50 {a:.4f} ms | benchmark_app median {b:.4f} ms | {100 * (a / b - 1):+.1f}% |"


def compare_onnxruntime(model: str, seconds: float, repeats: int) -> str:
    case = built(model, "onnxruntime_cpu", None)
    assert case.artifact is not None
    ours_p50, ours_mean, theirs = [], [], []
    for _ in range(repeats):
        stats = perfgate_latency(case, seconds)
        ours_p50.append(stats.p50_ms)
        ours_mean.append(stats.mean_ms)
        iterations = max(20, int(seconds / (stats.mean_ms / 1e3)))
        theirs.append(onnxruntime_test_mean_ms(case.artifact.path, iterations))
    case.close()
    p50, mean, b = (float(np.median(x)) for x in (ours_p50, ours_mean, theirs))
    return (
        f"| {model} | ONNX Runtime, default threads | perfgate mean {mean:.4f} ms (p50 {p50:.4f}) "
        f"| onnxruntime_test mean {b:.4f} ms | {100 * (mean / b - 1):+.1f}% (p50 {100 * (p50 / b - 1):+.1f}%) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet18", "digits_resnet"])
    parser.add_argument("--threads", type=int, default=1, help="OpenVINO inference threads (default 1)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per tool per repeat (default 3)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print("| model | backend | perfgate | vendor tool | gap |\n|---|---|---|---|---|")
    for model in args.models:
        print(compare_openvino(model, args.threads, args.seconds, args.repeats), flush=True)
        print(compare_onnxruntime(model, args.seconds, args.repeats), flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
