"""One case's guard: the step it is in, its time limit, and a one-line message when a step fails.

A step that raises becomes a :class:`CaseError`: one line for the terminal (the case, the step,
the library's own error line and, for a conversion, the fix), the full traceback kept for the
report. A case past its time limit (``[timing] case_timeout_s``) is interrupted with
:class:`CaseTimeout` ("timed out after 600 s in timing") and the session goes on.

The interruption is a ``SIGALRM`` handled in the main thread, so it stops Python code (a model
that sleeps, a loop that never ends) at once. Native code that never returns to Python (a
backend's kernel that deadlocks) cannot be interrupted in-process: ``grace_s`` after the limit a
watchdog thread calls ``on_hang``, which records the case as hung and ends the process, the
finished cases being safe in the run journal. ``--perf-isolate`` runs each case in a child
process, which is simply killed instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

# After the limit, how long native code may take to return to Python before the case counts as
# hung. PERFGATE_HANG_GRACE_S shortens it (perfgate's own tests).
HANG_GRACE_S = float(os.environ.get("PERFGATE_HANG_GRACE_S", "30"))


class CaseTimeout(BaseException):
    """The case ran past its time limit. A BaseException, so that a model's ``except Exception``
    cannot swallow it."""


class CaseError(Exception):
    """A step of a case failed. ``str()`` is the one-line message; ``details`` the full traceback."""

    status = "error"  # the case's status in the report; "crashed" when its isolation child died

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


def error_line(exc: BaseException) -> str:
    """The error in one line: ``Type: first line of its message``; a library's cut to 300 chars,
    perfgate's own whole (it names the file and ends with the fix, which a cut would lose)."""
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if type(exc).__module__.startswith("perfgate."):
        return line
    return line if len(line) <= 300 else line[:297] + "..."


class CaseGuard:
    """The step a case is in and the time it has left.

    :param case_id: named in every message.
    :param timeout_s: the case's time limit, from its start; ``None`` for no limit.
    :param on_step: called with each step's name as the case enters it (the run journal).
    :param on_hang: called from a watchdog thread with a message when the case is stuck in native
        code ``grace_s`` past its limit; it is expected not to return (it ends the process).
    :param hint: the fix to name when a step fails (``hint(step)``), or ``None``.
    """

    def __init__(
        self,
        case_id: str,
        timeout_s: float | None,
        on_step: Callable[[str], None] | None = None,
        on_hang: Callable[[str], None] | None = None,
        hint: Callable[[str], str | None] | None = None,
        grace_s: float = HANG_GRACE_S,
    ) -> None:
        self.case_id = case_id
        self.timeout_s = timeout_s
        self.on_step = on_step
        self.on_hang = on_hang
        self.hint = hint
        self.grace_s = grace_s
        self.current: str = "setup"
        self.started: float | None = None
        self._previous_handler: Any = None
        self._alarm = False
        self._watchdog: threading.Timer | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start the clock; idempotent."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        if not self.timeout_s:
            return
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
            self._previous_handler = signal.signal(signal.SIGALRM, self._interrupt)
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
            self._alarm = True
        if self.on_hang is not None:
            self._watchdog = threading.Timer(self.timeout_s + self.grace_s, self._hung)
            self._watchdog.daemon = True
            self._watchdog.start()

    def stop(self) -> None:
        """Stop the clock: the case is over (passed, failed or interrupted)."""
        self._stopped.set()
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous_handler or signal.SIG_DFL)
            self._alarm = False
        if self._watchdog is not None:
            self._watchdog.cancel()

    def timeout_message(self) -> str:
        return f"{self.case_id}: timed out after {self.timeout_s:g} s in {self.current} ([timing] case_timeout_s)"

    def _interrupt(self, signum: int, frame: Any) -> None:
        raise CaseTimeout(self.timeout_message())

    def _hung(self) -> None:
        if not self._stopped.is_set() and self.on_hang is not None:
            self.on_hang(
                f"{self.timeout_message()}, and stuck in native code {self.grace_s:g} s later: it cannot be "
                "interrupted in this process"
            )

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step: a failure in it becomes a :class:`CaseError` naming the case and the step."""
        self.start()
        self.current = name
        if self.on_step is not None:
            self.on_step(name)
        try:
            yield
        except (CaseError, CaseTimeout):
            raise
        except Exception as exc:
            fix = self.hint(name) if self.hint else None
            message = f"{self.case_id}: {name} failed: {error_line(exc)}" + (f"\n  fix: {fix}" if fix else "")
            raise CaseError(message, traceback.format_exc()) from None
