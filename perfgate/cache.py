"""The artifact cache: trained weights, exported and quantized models, engines.

Each entry is keyed by a hash of everything that shapes it (inputs, options, library versions),
built at most once even under several pytest-xdist workers (a file lock per key), and published
with an atomic rename so that a crash never leaves a half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock


def stable_hash(*parts: object) -> str:
    """A short hex digest of JSON-serialisable parts, stable across runs and machines."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


BUILD_RECORD = "build.json"


def _recorded_build_s(entry: Path) -> float:
    """What the cached artifact cost to build when it was built (a warm run still reports it)."""
    try:
        return float(json.loads((entry / BUILD_RECORD).read_text())["build_s"])
    except (OSError, ValueError, KeyError):
        return 0.0


@dataclass(frozen=True)
class CacheHit:
    """Where an artifact lies, what it cost to build, and whether this run reused it."""

    path: Path
    build_s: float
    cached: bool


class ArtifactCache:
    """A directory of artifacts, one sub-directory per kind, one entry per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, kind: str, key: str, filename: str) -> Path:
        """The path the artifact ``filename`` of entry ``kind/key`` has once built."""
        return self.root / kind / key / filename

    def get_or_build(self, kind: str, key: str, filename: str, build: Callable[[Path], None]) -> CacheHit:
        """Return the cached artifact, building it first if it is missing.

        :param kind: the family of artifact (``weights``, ``onnx``, ...), a folder of the cache.
        :param key: the hash of everything the artifact depends on.
        :param filename: the artifact's file name inside its entry folder.
        :param build: writes the artifact to the path it is given (inside a private folder).
        """
        final_dir = self.root / kind / key
        target = final_dir / filename
        if target.exists():
            return CacheHit(target, _recorded_build_s(final_dir), cached=True)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final_dir) + ".lock"):
            if target.exists():  # another worker built it while we waited
                return CacheHit(target, _recorded_build_s(final_dir), cached=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final_dir.parent))
            try:
                start = time.perf_counter()
                build(staging / filename)
                elapsed = time.perf_counter() - start
                if not (staging / filename).exists():
                    raise RuntimeError(f"the builder of {kind}/{key} did not write {filename}")
                (staging / BUILD_RECORD).write_text(json.dumps({"build_s": elapsed}))
                if final_dir.exists():
                    shutil.rmtree(final_dir)
                os.replace(staging, final_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return CacheHit(target, elapsed, cached=False)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make a committed baseline private
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dir_size_bytes(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
