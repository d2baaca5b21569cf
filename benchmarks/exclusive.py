"""One benchmark process on the machine at a time, when two measurement scripts share a session.

``gate_power.py`` runs a pytest process every half minute; ``suite_aa.py`` wants one every few
minutes and must not wait behind a stream of them: it announces itself (a marker file), and the
frequent script pauses between its processes while the marker is there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = Path(os.environ.get("PERFGATE_BENCH_LOCK", "/tmp/perfgate-bench.lock"))
WANTED = LOCK.with_suffix(".wanted")


@contextlib.contextmanager
def exclusive(priority: bool = False) -> Iterator[None]:
    """Hold the machine-wide benchmark lock; ``priority`` makes the other script yield to this one."""
    if priority:
        WANTED.touch()
    else:
        while WANTED.exists():
            time.sleep(1.0)
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if priority:
                WANTED.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
