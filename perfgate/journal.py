"""The run journal: every case's result written the moment it finishes, so a crash loses one case.

``results.json`` and the baselines are written when the session ends; a process that dies first
(a segfault in a backend, ``os._exit`` in a model, the OOM killer, a hang that is killed) would
lose every case of the run. The journal is an append-only JSON-lines file in the artifact cache
(``<cache>/runs/<run id>.jsonl``), one line per event, flushed and synced as it is written:

- ``run``: who ran (pid, runner, arguments) and when;
- ``case``: a case started; ``step``: it entered a step (building, accuracy, timing, regression);
- ``result``: a case finished, with its whole result (the same dict as in ``results.json``);
- ``finished``: the session ended normally.

A journal without ``finished`` whose process is gone is a run that died. The next run reads it,
says in its summary which case was running and in which step, and how many finished cases the
file holds (``perfgate report <journal>`` renders them), then keeps the file for inspection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEEP = 10  # journals kept per cache, newest first; older ones are removed


@dataclass(frozen=True)
class LostRun:
    """A previous run that ended without finishing: what was running and what it kept."""

    path: Path
    pid: int | None
    started: str
    running_case: str | None
    running_step: str | None
    finished_cases: int

    def line(self) -> str:
        where = "between cases"
        if self.running_case:
            step = f" (step: {self.running_step})" if self.running_step else ""
            where = f"while case {self.running_case} was running{step}"
        return (
            f"the run started {self.started} (pid {self.pid}) ended without finishing, {where}: "
            f"{self.finished_cases} finished case(s) are in {self.path} "
            f"(perfgate report {self.path} -o DIR renders them); re-run the lost case with --perf-isolate "
            "to see how it fails"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "journal": str(self.path),
            "pid": self.pid,
            "started": self.started,
            "running_case": self.running_case,
            "running_step": self.running_step,
            "finished_cases": self.finished_cases,
        }


class RunJournal:
    """The journal of this run; every write is one line, flushed and synced before it returns."""

    def __init__(self, folder: Path, run_id: str, header: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{run_id}.jsonl"
        self._handle = self.path.open("a", encoding="utf-8")
        self.write("run", run_id=run_id, pid=os.getpid(), started=_now(), **header)

    def write(self, event: str, **fields: Any) -> None:
        if self._handle.closed:
            return
        try:
            self._handle.write(json.dumps({"event": event, **fields}, default=str) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError:
            pass  # a full disk must not fail a case; the results still reach results.json

    def close(self, exitstatus: int) -> None:
        self.write("finished", exitstatus=int(exitstatus), at=_now())
        self._handle.close()


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a journal; a last line cut short by a crash is dropped."""
    events = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def finished_results(path: Path) -> list[dict[str, Any]]:
    """The results of the cases that finished in the run a journal records, last one per case."""
    results: dict[str, dict[str, Any]] = {}
    for event in read_events(path):
        if event.get("event") == "result" and isinstance(event.get("result"), dict):
            results[event["result"].get("case_id", "?")] = event["result"]
    return list(results.values())


def lost_runs(folder: Path, keep: int = KEEP) -> list[LostRun]:
    """Journals in ``folder`` of runs that died; each is reported once (renamed ``.lost.jsonl``).

    Also trims the folder to the ``keep`` newest journals.
    """
    if not folder.is_dir():
        return []
    lost = []
    for path in sorted(folder.glob("*.jsonl")):
        if path.name.endswith(".lost.jsonl"):
            continue
        events = read_events(path)
        header = events[0] if events and events[0].get("event") == "run" else {}
        if any(e.get("event") == "finished" for e in events) or _alive(header.get("pid")):
            continue
        running, step = _running(events)
        renamed = path.with_name(path.name.removesuffix(".jsonl") + ".lost.jsonl")
        with contextlib.suppress(OSError):
            path.rename(renamed)
            path = renamed
        lost.append(
            LostRun(
                path=path,
                pid=header.get("pid"),
                started=str(header.get("started", "?")),
                running_case=running,
                running_step=step,
                finished_cases=sum(1 for e in events if e.get("event") == "result"),
            )
        )
    _trim(folder, keep)
    return lost


def _running(events: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """The case that had started and not finished when the journal ends, and its last step."""
    done = {e["result"].get("case_id") for e in events if e.get("event") == "result" and isinstance(e.get("result"), dict)}  # fmt: skip
    case = step = None
    for event in events:
        if event.get("event") == "case":
            case, step = event.get("case_id"), None
        elif event.get("event") == "step" and event.get("case_id") == case:
            step = event.get("step")
    return (case, step) if case is not None and case not in done else (None, None)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _trim(folder: Path, keep: int) -> None:
    journals = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in journals[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A run id that sorts by start time and is unique on this machine."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
