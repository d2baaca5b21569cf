"""The timing loop: warmup, a stopping rule, and the hand-off to pytest-benchmark.

pytest-benchmark's pedantic mode does the timed rounds, so that its storage, compare and
histogram options keep working; perfgate decides how many rounds that is. The number comes from
the warmup's own timings: at least ``min_rounds`` calls and at least ``min_time_s`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from perfgate.validation import Rule, Settings, integer, number


@dataclass(frozen=True)
class TimingPolicy(Settings):
    """How long to warm up and to measure, and how long one case may take in all.

    :param warmup_rounds: untimed calls before the timed rounds (0: none by count).
    :param warmup_time_s: and at least this long of them.
    :param min_rounds: timed rounds, at least.
    :param min_time_s: and at least this long of them.
    :param max_rounds: the timed rounds' cap, whatever ``min_time_s`` asks.
    :param max_time_s: the cap on the timed rounds' (and on the warmup's) duration.
    :param case_timeout_s: the time limit of one whole case (build, accuracy pass, timing).
    """

    warmup_rounds: int = 10
    warmup_time_s: float = 0.2
    min_rounds: int = 100
    min_time_s: float = 1.0
    max_rounds: int = 200_000
    max_time_s: float = 30.0
    case_timeout_s: float = 600.0

    KIND: ClassVar[str] = "timing setting"
    RULES: ClassVar[dict[str, Rule]] = {
        "warmup_rounds": integer(0, hint="untimed calls before timing"),
        "warmup_time_s": number(0, hint="seconds of warmup, at least"),
        "min_rounds": integer(1, hint="timed rounds, at least"),
        "min_time_s": number(0, hint="seconds of timed rounds, at least"),
        "max_rounds": integer(1, hint="the cap on timed rounds, >= min_rounds"),
        "max_time_s": number(
            0, low_open=True, hint="the cap in seconds on warmup and on timing, >= min_time_s"
        ),
        "case_timeout_s": number(0, low_open=True, hint="the time limit of one whole case, in seconds"),
    }

    def problems(self) -> list[tuple[str, str, str]]:
        """Settings that contradict each other: ``(key, other key, what to do)`` per pair."""
        found = []
        if self.max_rounds < self.min_rounds:
            found.append(("max_rounds", "min_rounds", "max_rounds must be >= min_rounds"))
        if self.max_time_s < self.min_time_s:
            found.append(("max_time_s", "min_time_s", "max_time_s must be >= min_time_s"))
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warm_up(step: Callable[[], None], policy: TimingPolicy) -> list[float]:
    """Call ``step`` until both the warmup count and the warmup time are reached.

    Returns the duration of each warmup call, in seconds.
    """
    durations: list[float] = []
    deadline = time.perf_counter() + policy.warmup_time_s
    while len(durations) < policy.warmup_rounds or time.perf_counter() < deadline:
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
        if sum(durations) > policy.max_time_s:
            break
    return durations


def plan_rounds(warmup_s: list[float], policy: TimingPolicy) -> int:
    """Rounds that satisfy the stopping rule, estimated from the tail of the warmup."""
    settled = warmup_s[len(warmup_s) // 2 :] or warmup_s
    per_call = max(float(np.median(settled)), 1e-9)
    wanted = max(policy.min_rounds, math.ceil(policy.min_time_s / per_call))
    affordable = max(policy.min_rounds, int(policy.max_time_s / per_call))
    return int(min(wanted, affordable, policy.max_rounds))


def timed_step(
    run: Callable[[], None], synchronize: Callable[[], None], needs_sync: bool, device_timer: Any = None
) -> Callable[[], None]:
    """What a timed round calls: the run, then the device sync when the device runs async.

    On the CPU the bound ``run`` itself is timed, so perfgate adds no call of its own. A session
    with a ``device_timer`` (``perfgate.cuda_timing.CudaEventTimer``) gets device events recorded
    around the run, before the sync, so the device time is measured next to the host time.
    """
    if device_timer is not None:

        def timed() -> None:
            device_timer.start()
            run()
            device_timer.stop()
            synchronize()

        return timed
    if not needs_sync:
        return run

    def step() -> None:
        run()
        synchronize()

    return step


@dataclass(frozen=True)
class Timing:
    """Raw samples of the steady state, and how much warmup preceded them."""

    samples_s: list[float]
    warmup_rounds: int


def measure(benchmark: Any, step: Callable[[], None], policy: TimingPolicy) -> Timing | None:
    """Warm up, then time ``step`` through pytest-benchmark; ``None`` when benchmarks are disabled."""
    if not benchmark.enabled:
        benchmark.pedantic(step, rounds=1)
        return None
    warm = warm_up(step, policy)
    benchmark.pedantic(step, rounds=plan_rounds(warm, policy), iterations=1)
    samples = list(benchmark.stats.stats.data)
    return Timing(samples_s=samples, warmup_rounds=len(warm))
