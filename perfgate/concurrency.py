"""Other perfgate runs timing on this machine: two runs at once measure each other.

Each run that times holds an exclusive ``flock`` on its own file in a machine-wide folder
(``$TMPDIR/perfgate-runs``) for as long as it lives; the kernel drops the lock when the process
dies, however it dies, so a crashed run never looks alive. A case asks, before and after its
timing, which other runs hold their lock; any it finds are recorded in the case's settings
(``concurrent_runs``) and the session's summary and ``results.json`` warn about them.

A ``--perf-isolate`` child belongs to its parent's run (``PERFGATE_RUN_ID``): it looks, never
registers, and does not count its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent runs go undetected there
    fcntl = None  # type: ignore[assignment]

RUN_ID_ENV = "PERFGATE_RUN_ID"


def registry_folder() -> Path:
    """The machine-wide folder; PERFGATE_RUN_REGISTRY moves it (perfgate's own tests, a container
    whose /tmp is private but whose CPUs are not: point it at a shared mount)."""
    return Path(os.environ.get("PERFGATE_RUN_REGISTRY") or Path(tempfile.gettempdir()) / "perfgate-runs")


class RunRegistry:
    """This run's entry in the machine-wide registry, and a view of the others."""

    def __init__(
        self, run_id: str, info: dict[str, Any], folder: Path | None = None, register: bool = True
    ) -> None:
        self.run_id = run_id
        self.folder = folder or registry_folder()
        self._handle: Any = None
        if register and fcntl is not None:
            with contextlib.suppress(OSError):
                self._register(info)

    def _register(self, info: dict[str, Any]) -> None:
        if not self.folder.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                self.folder.chmod(0o1777)  # shared by every user of the machine, like /tmp
        handle = (self.folder / f"{self.run_id}.lock").open("w")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps({"run_id": self.run_id, "pid": os.getpid(), **info}))
        handle.flush()
        self._handle = handle

    def others(self) -> list[dict[str, Any]]:
        """The other runs alive now: ``{"run_id", "pid", "cwd", "started"}`` each."""
        if fcntl is None or not self.folder.is_dir():
            return []
        alive = []
        for path in sorted(self.folder.glob("*.lock")):
            if path.stem == self.run_id:
                continue
            try:
                with path.open("r") as handle:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:
                        alive.append(_info(path))
                        continue
                with contextlib.suppress(OSError):
                    path.unlink()  # a run that died without removing its file
            except OSError:
                continue
        return alive

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                Path(self._handle.name).unlink()
            self._handle.close()
            self._handle = None


def _info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    keep = ("run_id", "pid", "cwd", "started")
    return {key: data.get(key) for key in keep} | {"run_id": data.get("run_id", path.stem)}


def describe(runs: list[dict[str, Any]]) -> str:
    """``pid 123 in /path`` for each run, for a warning line."""
    return ", ".join(f"pid {r.get('pid')} in {r.get('cwd') or '?'}" for r in runs)
