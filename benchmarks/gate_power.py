"""False-alarm rate and power of perfgate's regression gate, next to pytest-benchmark's mean:10%.

Real cases of perf/matrix.toml (built through perfgate, cached) are timed in many short,
independent measurement sessions: each session loads the backend afresh, warms up, times the
bound ``run`` for ``--seconds`` and then times the reference workload, as a pytest run does.
Per trial, in random order: a baseline session, an unchanged session (A/A), and sessions with a
real slowdown injected into the inference path (a busy-wait of 5%, 10%, 20% of the case's p50
after every ``run``). Each comparison is judged by perfgate's gate at two thresholds and by
pytest-benchmark's own ``--benchmark-compare-fail=mean:10%`` rule on the same samples.

    python benchmarks/gate_power.py --trials 100 --seconds 0.25

Prints a Markdown table (docs/regression-gate.md holds the measured one).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_benchmark.utils import parse_compare_fail  # noqa: E402

from perfgate import hardware  # noqa: E402
from perfgate.cache import ArtifactCache  # noqa: E402
from perfgate.execution import CaseRun  # noqa: E402
from perfgate.gates import RegressionGate, RegressionPolicy  # noqa: E402
from perfgate.matrix import load_matrix  # noqa: E402
from perfgate.reference_workload import measure_reference, reference_kernel  # noqa: E402
from perfgate.session import PerfgateSession  # noqa: E402

SLOWDOWNS = (0.05, 0.10, 0.20)
MACHINE = 1.15  # the "whole runner 15% slower today" scenario
DEFAULT_CASES = ("digits_resnet-fp32-onnxruntime_cpu-b1", "digits_resnet-fp32-torch_cpu-b1")


def busy_wait(seconds: float) -> None:
    """Spin (not sleep) so the delay is CPU work in the inference path, like a slower kernel."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def slowed(run: Callable[[], None], delay_s: float) -> Callable[[], None]:
    if delay_s <= 0:
        return run

    def step() -> None:
        run()
        busy_wait(delay_s)

    return step


def stretched(call: Callable[[], None], factor: float) -> Callable[[], None]:
    """``call`` on a machine ``factor`` times slower: every call spins on for (factor - 1) of its own time."""

    def step() -> None:
        start = time.perf_counter()
        call()
        busy_wait((time.perf_counter() - start) * (factor - 1.0))

    return step


def built_case(case_id: str) -> CaseRun:
    """The case built, loaded and bound exactly as the plugin does it."""
    matrix = load_matrix(REPO / "perf" / "matrix.toml")
    case = next(c for c in matrix.cases if c.id == case_id)
    session = PerfgateSession(
        matrix=matrix,
        hardware=hardware.detect(),
        runner="gate-power",
        cache=ArtifactCache(Path(os.environ.get("PERFGATE_CACHE", REPO / ".perfgate_cache"))),
        baseline_root=REPO / "baselines",
        progress=lambda line: print(f"  {line}", file=sys.stderr),
    )
    run = CaseRun(case, session, nodeid=case_id)
    run.build()
    return run


def session_samples(
    case: CaseRun, delay_s: float, seconds: float, machine: float = 1.0
) -> tuple[np.ndarray, float]:
    """One measurement session: a fresh backend session, warmup, timed calls, then the reference.

    :param delay_s: the injected slowdown of the case alone, per call.
    :param machine: > 1 makes the whole machine slower: the case and the reference workload alike.
    """
    assert case.artifact is not None and case.request is not None and case.model is not None
    runtime = case.backend.load(case.artifact, case.request, case._run_settings())
    runtime.bind(case.model.data.example(case.case.batch_size))
    step = slowed(runtime.run, delay_s)
    step = stretched(step, machine) if machine != 1.0 else step
    warm_end = time.perf_counter() + 0.05
    while time.perf_counter() < warm_end:
        step()
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    runtime.close()
    reference = stretched(reference_kernel(), machine) if machine != 1.0 else None
    return np.asarray(samples), measure_reference(kernel=reference)


def pytest_benchmark_fails(current: np.ndarray, baseline: np.ndarray) -> bool:
    """pytest-benchmark's own rule, through its own parser and check class."""
    check = parse_compare_fail("mean:10%")
    return bool(check.fails({"mean": float(current.mean())}, {"mean": float(baseline.mean())}))


def measure(case_id: str, trials: int, seconds: float, seed: int) -> dict[str, dict[str, int]]:
    case = built_case(case_id)
    p50 = float(np.median(session_samples(case, 0.0, seconds)[0]))
    print(f"{case_id}: p50 {p50 * 1e6:.1f} us; {trials} trials", file=sys.stderr)
    # 200 bootstrap resamples instead of 1000: the interval is reported, it does not decide.
    gates = {
        "perfgate t=5%": RegressionGate(RegressionPolicy(threshold=0.05, resamples=200)),
        "perfgate t=10%": RegressionGate(RegressionPolicy(threshold=0.10, resamples=200)),
        "perfgate t=5%, no normalization": RegressionGate(
            RegressionPolicy(threshold=0.05, normalize=False, resamples=200)
        ),
    }
    scenarios = ("A/A", *(f"+{int(s * 100)}%" for s in SLOWDOWNS), "machine x1.15")
    alarms = {g: dict.fromkeys(scenarios, 0) for g in [*gates, "pytest-benchmark mean:10%"]}
    rng = random.Random(seed)
    for trial in range(trials):
        order = [
            ("base", 0.0, 1.0),
            ("A/A", 0.0, 1.0),
            *((f"+{int(s * 100)}%", s * p50, 1.0) for s in SLOWDOWNS),
        ]
        order.append(("machine x1.15", 0.0, MACHINE))
        rng.shuffle(order)  # no scenario always runs first or last: slow drifts hit all alike
        measured = {name: session_samples(case, delay, seconds, machine) for name, delay, machine in order}
        base, base_ref = measured["base"]
        for scenario in scenarios:
            current, ref = measured[scenario]
            for name, gate in gates.items():
                alarms[name][scenario] += gate.compute(current, base, ref / base_ref).status == "fail"
            alarms["pytest-benchmark mean:10%"][scenario] += pytest_benchmark_fails(current, base)
        if (trial + 1) % 10 == 0:
            print(f"  {trial + 1}/{trials} trials", file=sys.stderr)
    case.close()
    return alarms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), metavar="CASE_ID")
    parser.add_argument(
        "--trials", type=int, default=100, help="baseline/A-A/slowed session sets per case (default 100)"
    )
    parser.add_argument(
        "--seconds", type=float, default=0.25, help="timed seconds per session (default 0.25)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
    for case_id in args.cases:
        alarms = measure(case_id, args.trials, args.seconds, args.seed)
        print(f"\n### {case_id} ({args.trials} trials, {args.seconds} s per session)\n")
        print(
            "| rule | false alarms (A/A) | detected +5% | detected +10% | detected +20% | alarms, machine x1.15 |"
        )
        print("|---|---|---|---|---|---|")
        for rule, counts in alarms.items():
            cells = [f"{100 * counts[s] / args.trials:.0f}%" for s in counts]
            print(f"| {rule} | " + " | ".join(cells) + " |")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
