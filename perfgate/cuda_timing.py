"""GPU timing: CUDA events for device time, next to the host end-to-end time of each call.

pytest-benchmark times what the host sees from the call to the end of the device sync (trtexec's
"host latency"); a :class:`CudaEventTimer` on the session's stream times the device's own work
between two events around the run (trtexec's "GPU compute time"). The two are reported apart, and
a case whose device time is a small share of its host time is flagged: launch overhead or
host-device copies dominate it, and the summary says what to do about it.

Whether host-device copies are inside the timed region is an explicit setting, ``copies_timed``,
recorded with every GPU result: by default inputs are copied to the device in ``bind()`` and
outputs back in ``output()``, both outside the timed call.

Unverified on GPU hardware: this module is written against the documented ``torch.cuda.Event``
API and has not yet run on a GPU (see docs/gpu.md, "Not yet verified on GPU hardware").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from perfgate.results import DeviceTiming

# A device share (device p50 / host p50) below this means most of the host latency is not the
# device computing: kernel launches, Python, or copies. trtexec's docs draw the same line between
# "GPU compute" and "host latency"; half is the point where removing the overhead at least
# doubles the throughput, which is worth a line in the summary.
DEVICE_SHARE_THRESHOLD = 0.5

REMEDY_LAUNCH = (
    "launch overhead dominates: capture the model in a CUDA graph (torch_cuda_graphs, or "
    "torch.compile mode=reduce-overhead), or run a larger batch"
)
REMEDY_COPIES = (
    "host-device copies dominate: keep inputs and outputs on the device (copies_timed = false), "
    "or run a larger batch so that the copies amortise"
)

COPIES_TIMED_ENV = "PERFGATE_COPIES_TIMED"


def copies_timed(options: dict[str, Any]) -> bool:
    """Whether host-device copies belong inside the timed call, for a case's technique options.

    ``copies_timed`` in the technique's options (``[techniques.X] options = {copies_timed = true}``)
    wins; else the ``PERFGATE_COPIES_TIMED`` environment variable (``1``/``true``); default off.

    :param options: the technique options of the case.
    """
    if "copies_timed" in options:
        return bool(options["copies_timed"])
    return os.environ.get(COPIES_TIMED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class CudaEventTimer:
    """Device time of each timed call, from a pair of CUDA events recorded on one stream.

    ``start()`` and ``stop()`` only record events (a few microseconds of host work); reading the
    elapsed times is deferred to :meth:`samples_s`, or done in bulk every ``FLUSH_EVERY`` calls so
    that a long run does not hold hundreds of thousands of events. The events of a flushed pair are
    reused.

    :param stream: the ``torch.cuda.Stream`` the session launches its work on.
    """

    FLUSH_EVERY = 1024

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._pending: list[tuple[Any, Any]] = []
        self._free: list[tuple[Any, Any]] = []
        self._current: tuple[Any, Any] | None = None
        self._elapsed_s: list[float] = []

    def start(self) -> None:
        """Record the start event on the stream (called right before the run)."""
        import torch

        pair = (
            self._free.pop()
            if self._free
            else (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
        )
        pair[0].record(self.stream)
        self._current = pair

    def stop(self) -> None:
        """Record the end event (called right after the run, before the host waits for it)."""
        assert self._current is not None, "start() before stop()"
        self._current[1].record(self.stream)
        self._pending.append(self._current)
        self._current = None
        if len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        for begin, end in self._pending:
            end.synchronize()  # already complete after the session's sync: returns at once
            self._elapsed_s.append(begin.elapsed_time(end) / 1e3)  # elapsed_time is in ms
        self._free.extend(self._pending)
        self._pending = []

    def samples_s(self) -> list[float]:
        """The device time of every call so far, in seconds, oldest first."""
        self._flush()
        return list(self._elapsed_s)


def launch_overhead_flag(device_p50_s: float, host_p50_s: float, copies_in_timing: bool) -> dict[str, Any]:
    """Whether a case is dominated by launch overhead or by copies, and the remedy.

    :param device_p50_s: median device time of a call (CUDA events).
    :param host_p50_s: median host end-to-end time of the same calls.
    :param copies_in_timing: whether the timed call includes the host-device copies.
    :returns: ``device_share`` (device over host time), ``gpu_bound_by`` (``"device"``,
        ``"launch overhead"`` or ``"copies"``) and ``gpu_remedy`` (``None`` when device-bound).
    """
    share = device_p50_s / host_p50_s if host_p50_s > 0 else 1.0
    if share >= DEVICE_SHARE_THRESHOLD:
        return {"device_share": round(share, 4), "gpu_bound_by": "device", "gpu_remedy": None}
    cause, remedy = ("copies", REMEDY_COPIES) if copies_in_timing else ("launch overhead", REMEDY_LAUNCH)
    return {"device_share": round(share, 4), "gpu_bound_by": cause, "gpu_remedy": remedy}


def device_summary(device_s: Sequence[float]) -> dict[str, float]:
    """Percentiles of the device times, in milliseconds, for the result's settings."""
    data = np.asarray(device_s, dtype=np.float64) * 1e3
    summary = {f"p{q}_ms": round(float(np.percentile(data, q)), 6) for q in (50, 90, 95, 99)}
    summary["mean_ms"] = round(float(data.mean()), 6)
    summary["rounds"] = int(data.size)
    return summary


def record_device_timing(
    timer: CudaEventTimer, host_s: Sequence[float], copies_in_timing: bool
) -> DeviceTiming | None:
    """The device time of the timed rounds and the overhead flag, for the result's measurement.

    The timer also saw the warmup calls; the timed rounds are the last ``len(host_s)`` of them.

    :param timer: the session's device timer.
    :param host_s: the host samples pytest-benchmark kept, one per timed round.
    :param copies_in_timing: whether host-device copies were timed (``copies_timed``).
    :returns: ``None`` when the timer has no timed round.
    """
    device_s = timer.samples_s()[-len(host_s) :] if host_s else []
    if not device_s:
        return None
    host_p50_s, device_p50_s = float(np.median(host_s)), float(np.median(device_s))
    return DeviceTiming(
        device_time=device_summary(device_s),
        host_p50_ms=round(host_p50_s * 1e3, 6),
        **launch_overhead_flag(device_p50_s, host_p50_s, copies_in_timing),
    )
