"""A fixed reference workload, timed next to every case, that measures how fast the machine is now.

Its p50 now divided by its p50 when the baseline was taken is the machine's speed factor: a busy
neighbour, a lower clock or a different cloud host moves it the way it moves the cases, so the
regression gate divides each case's ratio by it (docs/regression-gate.md). The kernel mixes what
inference does on a CPU: small single-threaded GEMMs (SIMD float math through BLAS), an
element-wise transcendental and a sort (branches and memory), plus the Python call around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

# Part of what the baseline stores: a changed kernel makes old reference timings incomparable.
REFERENCE_NAME = "numpy-gemm48x4-tanh4k-sort2k-v1"
# 48x48x48 stays below OpenBLAS's multi-threading threshold, so the kernel is single-threaded
# like the default (1 intra-op thread) cases.
GEMM_SIZE = 48


def reference_kernel() -> Callable[[], None]:
    """The workload, on fixed inputs: a call takes about 16 microseconds on a 2020s x86 core."""
    rng = np.random.default_rng(20240601)
    a = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    b = rng.standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    out = np.empty_like(a)
    vector = rng.standard_normal(4096, dtype=np.float32)
    scratch = np.empty_like(vector)
    keys = rng.standard_normal(2048, dtype=np.float32)

    def call() -> None:
        for _ in range(4):
            np.matmul(a, b, out=out)
        np.tanh(vector, out=scratch)
        np.sort(keys, kind="quicksort")

    return call


def measure_reference(
    min_rounds: int = 300, min_time_s: float = 0.04, kernel: Callable[[], None] | None = None
) -> float:
    """The p50 of the reference workload in seconds, after a short warmup.

    :param min_rounds: at least this many timed calls.
    :param min_time_s: and at least this much timed time.
    :param kernel: the workload to time; the default is :func:`reference_kernel`. Another one
        (say, a deliberately slowed copy in a test) must be compared only with itself.
    """
    call = kernel or reference_kernel()
    for _ in range(20):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + min_time_s
    while len(samples) < min_rounds or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))
