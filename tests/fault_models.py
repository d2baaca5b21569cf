"""Models that misbehave on purpose, for the failure-handling tests (tests/test_faults.py).

Each behaves until its forward has run ``FAULT_AFTER`` times, so the FP32 reference and the
accuracy pass succeed and the fault strikes during timing, as a backend's bug would. The counter
is per process: a ``--perf-isolate`` child that replaces a crashed one starts from zero.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import torch
from tiny_models import blobs, tiny_mlp  # noqa: F401  (the data loader the fault matrix names)

# Forward calls before the fault: past the reference and the b1 accuracy pass (200 rows).
# FAULT_AFTER in the environment moves it (a run with timing disabled makes few calls).
FAULT_AFTER = int(os.environ.get("FAULT_AFTER", "300"))


class Faulty(torch.nn.Module):
    """A tiny MLP whose forward calls ``fault`` once it has run ``FAULT_AFTER`` times."""

    def __init__(self, inner: torch.nn.Module, fault: str) -> None:
        super().__init__()
        self.inner = inner
        self.fault = fault
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > FAULT_AFTER:
            FAULTS[self.fault]()
        return self.inner(x)


def _sleep_forever() -> None:
    time.sleep(3600)


def _native_hang() -> None:
    """A hang no alarm can interrupt, as in a deadlocked native kernel: SIGALRM is blocked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(3600)


def _exit() -> None:
    os._exit(3)


def _segfault() -> None:
    ctypes.string_at(0)


FAULTS = {"sleep": _sleep_forever, "native_hang": _native_hang, "exit": _exit, "segfault": _segfault}


def _faulty(ctx, fault: str) -> torch.nn.Module:
    return Faulty(tiny_mlp(ctx), fault)


def sleeping_mlp(ctx) -> torch.nn.Module:
    return _faulty(ctx, "sleep")


def native_hang_mlp(ctx) -> torch.nn.Module:
    return _faulty(ctx, "native_hang")


def exiting_mlp(ctx) -> torch.nn.Module:
    return _faulty(ctx, "exit")


def segfaulting_mlp(ctx) -> torch.nn.Module:
    return _faulty(ctx, "segfault")


class FftMLP(torch.nn.Module):
    """Spectral features then a linear layer: torch runs it, ONNX has no export for ``rfft``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.fft.rfft(x).abs())


def fft_mlp(ctx) -> torch.nn.Module:
    return FftMLP().eval()
