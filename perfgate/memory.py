"""Peak memory of a case: the process's resident-set high-water mark, reset per case on Linux."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class PeakMemory:
    """Tracks the peak RSS between ``start()`` and ``peak_mb()``.

    Linux lets a process reset its own high-water mark (writing 5 to clear_refs), so each case
    gets its own peak; elsewhere the peak is the process's lifetime maximum, flagged as such.
    """

    def __init__(self) -> None:
        self.per_case = False
        self.baseline_mb = 0.0

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self.per_case = _status_kib("VmHWM") is not None
        except OSError:
            self.per_case = False
        self.baseline_mb = (_status_kib("VmRSS") or 0) / 1024

    def peak_mb(self) -> float:
        hwm = _status_kib("VmHWM") if self.per_case else None
        if hwm is not None:
            return hwm / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
