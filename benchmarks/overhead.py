"""perfgate's per-call overhead over calling the backend directly in a bare loop.

The same loaded session is timed two ways, alternating ``--repeats`` times:

* bare: ``for _ in range(n): run()`` with one clock read around the whole loop;
* perfgate: ``perfgate.timing.measure`` through a real pytest-benchmark ``BenchmarkFixture``
  (pedantic mode, one clock pair per call), the exact path of a ``pytest perf`` test, measured
  as wall time per call of the whole ``measure`` (warmup excluded).

Two figures: what perfgate adds to the latency it *records* (the mean of its samples minus the
bare loop's time per call: one clock pair and the call), and the wall time per round of the whole
``measure`` (pytest-benchmark's per-round bookkeeping, outside the timed window: it costs run
time, not accuracy). A no-op ``run`` shows the floor.

    python benchmarks/overhead.py --case digits_resnet-fp32-onnxruntime_cpu-b1 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_benchmark.fixture import BenchmarkFixture  # noqa: E402
from pytest_benchmark.logger import Logger  # noqa: E402
from pytest_benchmark.utils import NameWrapper  # noqa: E402

import perfgate  # noqa: E402
from perfgate.timing import TimingPolicy, measure  # noqa: E402

ROUNDS = 20_000


def fixture() -> BenchmarkFixture:
    """A pytest-benchmark fixture as its plugin makes one for a test, with perfgate's defaults."""
    node = SimpleNamespace(name="overhead", nodeid="benchmarks/overhead.py::overhead")
    return BenchmarkFixture(
        node, disable_gc=False, timer=NameWrapper(time.perf_counter), min_rounds=5, min_time=5e-6, max_time=1.0,
        precision=None, confidence=None, warmup=False, warmup_iterations=0, calibration_precision=10,
        add_stats=lambda stats: None, logger=Logger(0), warner=lambda *a, **k: None, disabled=False,
        cprofile=False, cprofile_loops=None, cprofile_dump=False,
    )  # fmt: skip


def bare_per_call(run: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


def perfgate_per_call(run: Callable[[], None], n: int) -> tuple[float, float]:
    """Mean of the samples perfgate records, and wall time per round of the whole ``measure``."""
    policy = TimingPolicy(warmup_rounds=1, warmup_time_s=0.0, min_rounds=n, min_time_s=0.0, max_rounds=n)
    start = time.perf_counter()
    timing = measure(fixture(), run, policy)
    elapsed = time.perf_counter() - start
    assert timing is not None
    return float(np.mean(timing.samples_s)), elapsed / len(timing.samples_s)


def backend_run(case_id: str) -> Callable[[], None]:
    """The case's loaded runtime, bound to one example, as ``pytest perf`` builds it."""
    case = perfgate.build_case(REPO / "perf" / "matrix.toml", case_id, root=REPO)
    assert case.runtime is not None and case.model is not None
    case.runtime.bind(case.model.data.example(case.case.batch_size))
    return case.runtime.run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", default="digits_resnet-fp32-onnxruntime_cpu-b1")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    print("| run | bare loop us/call | perfgate recorded mean us | added to the latency us | wall us/round |")
    print("|---|---|---|---|---|")
    for label, run in (("no-op", lambda: None), (args.case, backend_run(args.case))):
        n = ROUNDS if label == "no-op" else 2000
        bare, recorded, wall = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_per_call(run, n))
            mean, per_round = perfgate_per_call(run, n)
            recorded.append(mean)
            wall.append(per_round)
        b, r, w = (float(np.median(x)) * 1e6 for x in (bare, recorded, wall))
        print(f"| {label} | {b:.3f} | {r:.3f} | {r - b:+.3f} | {w:.3f} |", flush=True)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
