"""The artifact cache: trained weights, exported and quantized models, engines.

Each entry is keyed by a hash of everything that shapes it (inputs, options, library versions),
built at most once even under several pytest-xdist workers (a file lock per key), and published
with an atomic rename so that a crash never leaves a half-written artifact behind.

An entry checks itself: its ``build.json`` records the size and sha256 of every file the build
wrote, and every hit is verified against that record before it is returned. An entry that fails
(a file overwritten, truncated or missing, no record: an older perfgate's entry) is rebuilt with a
:class:`PerfgateCacheWarning`; one that fails again straight after its rebuild raises
:class:`CacheError`, which names the entry and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock


def stable_hash(*parts: object) -> str:
    """A short hex digest of JSON-serialisable parts, stable across runs and machines."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:20]


BUILD_RECORD = "build.json"
CACHE_FIX = "point --perf-cache / PERFGATE_CACHE at another folder"
_CHUNK = 1 << 20


class PerfgateCacheWarning(UserWarning):
    """A cache entry failed its check (changed, truncated, missing, unrecorded) and was rebuilt."""


class CacheError(RuntimeError):
    """A cache entry is still unusable after it was rebuilt; the message names it and the fix."""


@dataclass(frozen=True)
class CacheHit:
    """Where an artifact lies, what it cost to build, and whether this run reused it.

    ``value`` is what the ``load`` callable given to :meth:`ArtifactCache.get_or_build` returned
    (``None`` without one).
    """

    path: Path
    build_s: float
    cached: bool
    value: Any = None


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _entry_files(folder: Path) -> list[Path]:
    """Every file of an entry folder (recursively), its build record aside, in a stable order."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != BUILD_RECORD
    )


class ArtifactCache:
    """A directory of artifacts, one sub-directory per kind, one entry per key.

    :param root: the cache folder (``--perf-cache``, ``PERFGATE_CACHE``, ``.perfgate_cache``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # sha256 of the files verified so far, by (path, size, mtime_ns): a session hashes each
        # file once, however many cases use it.
        self._digests: dict[tuple[str, int, int], str] = {}

    def get_or_build(
        self,
        kind: str,
        key: str,
        filename: str,
        build: Callable[[Path], None],
        load: Callable[[Path], Any] | None = None,
    ) -> CacheHit:
        """Return the cached artifact, verified, building it first if it is missing or damaged.

        A hit is checked against the sizes and sha256 digests its ``build.json`` recorded (each
        file hashed once per session). When a file changed, is missing or truncated, or the
        record is missing or unreadable (an older perfgate's entry, a half-written one), a
        :class:`PerfgateCacheWarning` names the entry and what was wrong, and the entry is
        deleted and rebuilt under its lock, then checked again; a second failure raises
        :class:`CacheError`.

        ``load`` is for an artifact whose bytes can be intact and still unusable (written by an
        incompatible library version): ``load(path)`` runs on the artifact, and its result comes
        back as ``hit.value``. When it raises on a cached artifact, the entry is rebuilt once
        (with the warning) and loaded again; when it raises on a freshly built one, or again
        after the rebuild, :class:`CacheError` names the path, the fix and the error's last line.
        ``load`` should only read (``torch.load``, not ``module.load_state_dict``): a failed load
        must leave whatever ``build`` starts from untouched. Example::

            hit = cache.get_or_build("weights", key, "weights.pt", train,
                                     load=lambda path: torch.load(path, weights_only=True))
            model.load_state_dict(hit.value)

        :param kind: the family of artifact (``weights``, ``onnx``, ...), a folder of the cache.
        :param key: the hash of everything the artifact depends on.
        :param filename: the artifact's file (or folder) name inside its entry folder.
        :param build: writes the artifact to the path it is given (inside a private folder); it
            may write other files beside it, which are recorded and verified too.
        :param load: reads the artifact back; see above.
        :raises CacheError: the entry is unusable even after a rebuild.
        """
        hit, record_id = self._get(kind, key, filename, build)
        if load is None:
            return hit
        try:
            return replace(hit, value=load(hit.path))
        except Exception as exc:  # an intact file this library cannot read
            if not hit.cached:
                raise self._error(hit.path, "was just built but does not load", exc) from exc
            why = f"{filename}: does not load ({_last_line(exc)})"
        hit, _ = self._get(kind, key, filename, build, failed=(why, record_id))
        try:
            return replace(hit, value=load(hit.path))
        except Exception as exc:
            raise self._error(hit.path, "does not load even after it was rebuilt", exc) from exc

    def _get(
        self,
        kind: str,
        key: str,
        filename: str,
        build: Callable[[Path], None],
        failed: tuple[str, tuple[int, int] | None] | None = None,
    ) -> tuple[CacheHit, tuple[int, int] | None]:
        """The verified hit and its record's identity; ``failed``: (why, record) of a load that failed."""
        final_dir = self.root / kind / key
        target = final_dir / filename
        if failed is None and final_dir.is_dir():
            build_s, problem, record_id = self._check(final_dir, filename)
            if problem is None:
                return CacheHit(target, build_s, cached=True), record_id
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final_dir) + ".lock"):
            reason = None
            if final_dir.is_dir():
                build_s, problem, record_id = self._check(final_dir, filename)
                if failed is not None and problem is None and record_id == failed[1]:
                    problem = failed[0]  # still the build whose load failed (else another worker rebuilt it)
                if problem is None:  # another worker built it while we waited
                    return CacheHit(target, build_s, cached=True), record_id
                reason = problem
                shutil.rmtree(final_dir)
            self._remove_staging(final_dir)
            try:
                elapsed = self._build(final_dir, filename, build)
            finally:
                if reason is not None:
                    warnings.warn(
                        f"perfgate cache: {final_dir}: {reason}; rebuilding",
                        PerfgateCacheWarning,
                        stacklevel=3,
                    )
            if reason is not None:  # read the rebuilt entry back for real: the disk must keep it
                _, problem, record_id = self._check(final_dir, filename, memoized=False)
                if problem is not None:
                    raise CacheError(
                        f"{target}: {problem} straight after it was rebuilt; delete {final_dir}, or {CACHE_FIX}"
                    )
            else:
                record_id = _record_id(final_dir)
        return CacheHit(target, elapsed, cached=False), record_id

    def _build(self, final_dir: Path, filename: str, build: Callable[[Path], None]) -> float:
        """Build into a private folder, record sizes and digests, publish it atomically."""
        key = final_dir.name
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".staging", dir=final_dir.parent))
        try:
            start = time.perf_counter()
            build(staging / filename)
            elapsed = time.perf_counter() - start
            if not (staging / filename).exists():
                raise RuntimeError(f"the builder of {final_dir.parent.name}/{key} did not write {filename}")
            files: dict[str, dict[str, Any]] = {}
            for path in _entry_files(staging):
                files[path.relative_to(staging).as_posix()] = {
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
            record = {"build_s": elapsed, "files": files}
            (staging / BUILD_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
            if final_dir.exists():
                shutil.rmtree(final_dir)
            os.replace(staging, final_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for name, entry in files.items():  # the rename keeps size and mtime: seed the memo
            with contextlib.suppress(OSError):
                stat = (final_dir / name).stat()
                self._digests[(str(final_dir / name), stat.st_size, stat.st_mtime_ns)] = entry["sha256"]
        return elapsed

    @staticmethod
    def _remove_staging(final_dir: Path) -> None:
        """Remove the staging folders a killed build of this key left (we hold the key's lock)."""
        prefix = f".{final_dir.name}."
        with contextlib.suppress(OSError):
            for stale in final_dir.parent.iterdir():
                if stale.name.startswith(prefix) and stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)

    def _check(
        self, entry: Path, filename: str, memoized: bool = True
    ) -> tuple[float, str | None, tuple[int, int] | None]:
        """(build_s, what is wrong with the entry or ``None``, the record's identity)."""
        record_path = entry / BUILD_RECORD
        try:
            record_id = _record_id(entry)
            record = json.loads(record_path.read_text())
        except FileNotFoundError:
            return (
                0.0,
                f"{BUILD_RECORD}: missing (an entry of an older perfgate, or a half-written one)",
                None,
            )
        except (OSError, ValueError) as exc:
            return 0.0, f"{BUILD_RECORD}: unreadable ({_last_line(exc)})", None
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, dict) or not files:
            return 0.0, f"{BUILD_RECORD}: no content hashes (an entry of an older perfgate)", record_id
        try:
            build_s = float(record.get("build_s", 0.0))
        except (TypeError, ValueError):
            build_s = 0.0
        if not (entry / filename).exists():
            return build_s, f"{filename}: missing", record_id
        for name, expected in sorted(files.items()):
            path = entry / name
            try:
                stat = path.stat()
                size, digest = int(expected["bytes"]), str(expected["sha256"])
            except FileNotFoundError:
                return build_s, f"{name}: missing", record_id
            except (OSError, KeyError, TypeError, ValueError) as exc:
                return build_s, f"{name}: unreadable ({_last_line(exc)})", record_id
            if stat.st_size != size:
                return (
                    build_s,
                    f"{name}: {stat.st_size} bytes, {size} when it was built (truncated or overwritten)",
                    record_id,
                )
            memo = (str(path), stat.st_size, stat.st_mtime_ns)
            actual = self._digests.get(memo) if memoized else None
            if actual is None:
                try:
                    actual = file_sha256(path)
                except OSError as exc:
                    return build_s, f"{name}: unreadable ({_last_line(exc)})", record_id
                self._digests[memo] = actual
            if actual != digest:
                return build_s, f"{name}: sha256 mismatch (the file changed after it was built)", record_id
        return build_s, None, record_id

    @staticmethod
    def _error(path: Path, what: str, exc: BaseException) -> CacheError:
        return CacheError(f"{path} {what}: {_last_line(exc)}; delete {path.parent}, or {CACHE_FIX}")


def _record_id(entry: Path) -> tuple[int, int] | None:
    """Which build wrote the entry's record (inode and mtime), to tell a rebuild by another worker."""
    try:
        stat = (entry / BUILD_RECORD).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


# A writer's temp file: ".NAME.<pid>.<random>.tmp" (pid: tell a dead writer's leftover).
STALE_TEMP_S = 600.0


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix.

    The text goes to a temp file beside it, ``.NAME.<pid>.<random>.tmp``, renamed over ``path``.
    A process killed in that window leaves the temp file; the next write of the same ``path``
    removes such leftovers (older than ten minutes, or of a writer no longer running), and
    ``baselines/**/.*.tmp`` in ``.gitignore`` keeps them out of a ``git add baselines/RUNNER``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files a killed writer of ``path`` left beside it (this format and the older one)."""
    ours = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    older = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}")  # before the pid and .tmp
    now = time.time()
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = ours.fullmatch(candidate.name)
            if match is None and older.fullmatch(candidate.name) is None:
                continue
            with contextlib.suppress(OSError):
                age = now - candidate.lstat().st_mtime
                dead = match is not None and not _pid_alive(int(match.group(1)))
                if age > STALE_TEMP_S or (dead and age > 5.0):
                    candidate.unlink()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, someone else's
        return True
    return True


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
