"""Later passes: the sessions of a case measured after the other cases.

A case's test runs once where pytest collected it: its first session. A case that needs more
(the repeats of ``--perf-repeats``, or the confirmation of a failing verdict) says so in its
result (``pending``); its reports are held, and after the last case the plugin runs its test
again through the same pytest protocol: fresh fixtures, a fresh runtime session, and
pytest-benchmark's own timing loop, timer and instrumentation pausing, as for the first reading.
The repeats go round-robin over the waiting cases, so that each session of a case lands at
another moment of the run; confirmations come after every repeat. pytest then reports each case
once, with the verdict of its last pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
from _pytest.runner import runtestprotocol

from perfgate.results import CaseResult

T = TypeVar("T")

# The result a case's fixture recorded in its last pass, for the plugin to read after the protocol.
PASS_RESULT = pytest.StashKey[CaseResult]()


class LaterPasses:
    """The cases waiting for a later session, and the results their next pass goes on from.

    :param progress: prints a progress line (the plugin's, past output capturing).
    :param on_start: records the start of a pass of a case (the run journal).
    """

    def __init__(self, progress: Callable[[str], None], on_start: Callable[[pytest.Item], None]) -> None:
        self.progress = progress
        self.on_start = on_start
        self._earlier: dict[str, CaseResult] = {}
        self._waiting: list[pytest.Item] = []

    def earlier(self, nodeid: str) -> CaseResult | None:
        """The result a case's next pass goes on from, or ``None`` for its first pass."""
        return self._earlier.get(nodeid)

    def run(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Run a case's first pass; after the last case, every later pass."""
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        forget(item.stash, PASS_RESULT)
        self._settle(item, runtestprotocol(item, nextitem=nextitem, log=False), started=True)
        if nextitem is None or item.session.shouldfail or item.session.shouldstop:
            self.flush()  # the last case, or pytest stops here (-x, --maxfail): no case may stay held

    def flush(self) -> None:
        """Round after round over the waiting cases: their repeats, then their confirmations."""
        while self._waiting:
            kinds = [self._earlier[item.nodeid].pending for item in self._waiting]
            kind = "repeat" if "repeat" in kinds else "confirmation"
            round_ = [item for item, k in zip(self._waiting, kinds, strict=True) if k == kind]
            self._waiting = [item for item in self._waiting if item not in round_]
            for index, item in enumerate(round_):
                session = len(self._earlier[item.nodeid].sessions) + 1
                self.progress(f"{_case(item)}: {kind} (session {session}) after the other cases")
                self.on_start(item)
                nextitem = round_[index + 1] if index + 1 < len(round_) else None
                forget(item.stash, PASS_RESULT)
                self._settle(item, runtestprotocol(item, nextitem=nextitem, log=False), started=False)

    def _settle(self, item: pytest.Item, reports: list[pytest.TestReport], started: bool) -> None:
        """Hold the reports of a case that waits for another session; log those of one that is done.

        :param started: pytest's log of the case's start was given for this pass.
        """
        result = item.stash.get(PASS_RESULT, None)
        if result is not None and result.pending and all(report.passed for report in reports):
            self._earlier[item.nodeid] = result
            self._waiting.append(item)
            return
        self._earlier.pop(item.nodeid, None)
        if not started:
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in reports:
            item.ihook.pytest_runtest_logreport(report=report)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def forget(stash: pytest.Stash, key: pytest.StashKey[T]) -> None:
    """Remove ``key`` from ``stash`` if it is there (a stash has no ``pop``)."""
    if key in stash:
        del stash[key]


def _case(item: pytest.Item) -> str:
    nodeid = item.nodeid
    return nodeid[nodeid.index("[") + 1 : -1] if nodeid.endswith("]") and "[" in nodeid else nodeid
