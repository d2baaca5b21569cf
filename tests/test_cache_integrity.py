"""The artifact cache checks itself: damaged, unrecorded or unloadable entries are rebuilt.

Each test uses a private cache folder (``tmp_path``), never the shared test cache: it corrupts
what it builds. The damage is real: bytes flipped inside a tensor's data in a ``torch.save``
archive (``torch.load`` does not check the zip CRC, so such a file still loads), a truncated
file, a ``build.json`` of an older perfgate, a killed build's staging folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import blobs, tiny_mlp

import perfgate.cache as cache_module
from perfgate.backends import BuildRequest
from perfgate.backends.onnx_export import INPUT_NAME, export_onnx
from perfgate.cache import (
    BUILD_RECORD,
    ArtifactCache,
    CacheError,
    PerfgateCacheWarning,
    atomic_write_text,
)
from perfgate.models import ModelContext, model_fingerprint

REPO = Path(__file__).resolve().parent.parent


def flip_tensor_bytes(path: Path, count: int = 256) -> None:
    """XOR ``count`` bytes in the middle of the largest tensor's data of a ``torch.save`` archive.

    The zip's headers and directory stay intact (the tensor is stored uncompressed), so the file
    still loads, with other values.
    """
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        middle = start + (info.file_size - count) // 2
        handle.seek(middle)
        original = handle.read(count)
        handle.seek(middle)
        handle.write(bytes(b ^ 0x5A for b in original))


def flip_middle_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = (len(data) - count) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train_tiny(cache: ArtifactCache) -> torch.nn.Module:
    return tiny_mlp(ModelContext("tiny_mlp", blobs(), cache, {}, lambda line: None)).eval()


def accuracy(model: torch.nn.Module) -> float:
    data = blobs()
    with torch.inference_mode():
        predictions = model(torch.from_numpy(data.eval_inputs)).argmax(1).numpy()
    return float(np.mean(predictions == data.eval_labels))


def only_entry(root: Path, kind: str) -> Path:
    (entry,) = [p for p in (root / kind).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


def rerecord(entry: Path) -> None:
    """Record the entry's files as they are now (an entry whose bytes hash fine)."""
    record = json.loads((entry / BUILD_RECORD).read_text())
    for name in record["files"]:
        data = (entry / name).read_bytes()
        record["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (entry / BUILD_RECORD).write_text(json.dumps(record))


def cache_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, PerfgateCacheWarning)]


# --- trained weights ---------------------------------------------------------------------------


def test_corrupt_weights_are_rebuilt_and_accuracy_is_the_untouched_models(tmp_path: Path) -> None:
    untouched = train_tiny(ArtifactCache(tmp_path))
    expected = {k: v.clone() for k, v in untouched.state_dict().items()}
    weights = only_entry(tmp_path, "weights") / "weights.pt"
    flip_tensor_bytes(weights)
    damaged = torch.load(weights, weights_only=True)  # the bug: the damaged file loads
    assert any(not torch.equal(damaged[k], expected[k]) for k in expected)

    with pytest.warns(PerfgateCacheWarning) as record:
        rebuilt = train_tiny(ArtifactCache(tmp_path))  # a new session: nothing memoized
    (message,) = cache_warnings(record.list)
    assert str(weights.parent) in message
    assert "weights.pt: sha256 mismatch (the file changed after it was built); rebuilding" in message
    assert all(torch.equal(rebuilt.state_dict()[k], expected[k]) for k in expected)
    assert accuracy(rebuilt) == accuracy(untouched) == 1.0


def test_truncated_weights_are_rebuilt(tmp_path: Path) -> None:
    untouched = train_tiny(ArtifactCache(tmp_path))
    weights = only_entry(tmp_path, "weights") / "weights.pt"
    truncate(weights)
    with pytest.warns(PerfgateCacheWarning, match=r"weights\.pt: \d+ bytes, \d+ when it was built"):
        rebuilt = train_tiny(ArtifactCache(tmp_path))
    assert accuracy(rebuilt) == accuracy(untouched)
    assert torch.load(weights, weights_only=True).keys() == untouched.state_dict().keys()


def test_weights_that_hash_fine_but_do_not_load_are_rebuilt_once(tmp_path: Path) -> None:
    """An intact file this torch cannot load (weights_only refuses it) is retrained, with the warning."""
    untouched = train_tiny(ArtifactCache(tmp_path))
    entry = only_entry(tmp_path, "weights")
    torch.save({"net": untouched.state_dict(), "when": time.struct_time((2024, 1, 1, 0, 0, 0, 0, 1, 0))},
               entry / "weights.pt")  # fmt: skip
    rerecord(entry)
    with pytest.warns(PerfgateCacheWarning, match=r"weights\.pt: does not load \(UnpicklingError"):
        rebuilt = train_tiny(ArtifactCache(tmp_path))
    assert accuracy(rebuilt) == accuracy(untouched)


# --- exported models ---------------------------------------------------------------------------


def onnx_request(cache: ArtifactCache, model: torch.nn.Module) -> BuildRequest:
    return BuildRequest(
        case_id="tiny_mlp-fp32-onnxruntime_cpu-b1",
        model=model,
        model_key=model_fingerprint(model),
        lowering="none",
        options={},
        data=blobs(),
        batch_size=1,
        cache=cache,
    )


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (flip_middle_bytes, "model.onnx: sha256 mismatch"),
        (truncate, r"model.onnx: \d+ bytes, \d+ when it was built"),
    ],
)
def test_corrupt_or_truncated_onnx_is_rebuilt(tmp_path: Path, damage, what: str) -> None:  # type: ignore[no-untyped-def]
    model = train_tiny(ArtifactCache(tmp_path))
    first = export_onnx(onnx_request(ArtifactCache(tmp_path), model))
    original = first.path.read_bytes()
    damage(first.path)
    with pytest.warns(PerfgateCacheWarning, match=what) as record:
        again = export_onnx(onnx_request(ArtifactCache(tmp_path), model))
    assert str(first.path.parent) in cache_warnings(record.list)[0]
    assert again.path == first.path and not again.cached
    assert again.path.read_bytes() == original
    inputs = blobs().eval_inputs
    session = ort.InferenceSession(str(again.path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        reference = model(torch.from_numpy(inputs)).numpy()
    assert np.allclose(session.run(None, {INPUT_NAME: inputs})[0], reference, atol=1e-5)


# --- ArtifactCache on its own ------------------------------------------------------------------


class Builder:
    """Writes ``payload`` (and a second file beside it, as an IR's .bin); counts its calls."""

    def __init__(self, payload: bytes = b"artifact" * 100) -> None:
        self.payload = payload
        self.calls = 0

    def __call__(self, path: Path) -> None:
        self.calls += 1
        path.write_bytes(self.payload)
        path.with_suffix(".bin").write_bytes(self.payload[::-1])


def test_a_hit_is_verified_and_hashed_once_per_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = Builder()
    built = ArtifactCache(tmp_path).get_or_build("ir", "k1", "model.xml", build)
    record = json.loads((built.path.parent / BUILD_RECORD).read_text())
    assert set(record["files"]) == {"model.xml", "model.bin"} and record["build_s"] >= 0
    assert record["files"]["model.bin"]["sha256"] == hashlib.sha256(build.payload[::-1]).hexdigest()

    hashed: list[str] = []
    real = cache_module.file_sha256
    monkeypatch.setattr(
        cache_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path)
    )
    cache = ArtifactCache(tmp_path)
    for _ in range(3):
        hit = cache.get_or_build("ir", "k1", "model.xml", build)
        assert hit.cached and hit.path == built.path
    assert sorted(hashed) == ["model.bin", "model.xml"]  # the first hit only
    assert build.calls == 1


def test_a_changed_second_file_of_the_entry_is_caught(tmp_path: Path) -> None:
    build = Builder()
    hit = ArtifactCache(tmp_path).get_or_build("ir", "k1", "model.xml", build)
    flip_middle_bytes(hit.path.with_suffix(".bin"), count=8)
    with pytest.warns(PerfgateCacheWarning, match=r"model\.bin: sha256 mismatch"):
        ArtifactCache(tmp_path).get_or_build("ir", "k1", "model.xml", build)
    assert build.calls == 2
    assert hit.path.with_suffix(".bin").read_bytes() == build.payload[::-1]


def test_a_missing_file_of_the_entry_is_caught(tmp_path: Path) -> None:
    build = Builder()
    hit = ArtifactCache(tmp_path).get_or_build("ir", "k1", "model.xml", build)
    hit.path.with_suffix(".bin").unlink()
    with pytest.warns(PerfgateCacheWarning, match=r"model\.bin: missing; rebuilding"):
        ArtifactCache(tmp_path).get_or_build("ir", "k1", "model.xml", build)
    assert build.calls == 2 and hit.path.with_suffix(".bin").exists()


@pytest.mark.parametrize(
    ("record", "what"),
    [
        ('{"build_s": 12.5}', r"build.json: no content hashes \(an entry of an older perfgate\)"),
        (None, r"build.json: missing \(an entry of an older perfgate, or a half-written one\)"),
        ('{"build_s": 12.5, "fil', r"build.json: unreadable \(JSONDecodeError"),
    ],
    ids=["older-perfgate", "no-record", "half-written"],
)
def test_an_entry_without_a_hash_record_is_rebuilt_once_then_verified(
    tmp_path: Path, record: str | None, what: str
) -> None:
    entry = tmp_path / "onnx" / "k1"
    entry.mkdir(parents=True)
    (entry / "model.onnx").write_bytes(b"whatever an older perfgate wrote")
    if record is not None:
        (entry / BUILD_RECORD).write_text(record)
    build = Builder()
    with pytest.warns(PerfgateCacheWarning, match=re.escape(str(entry)) + ": " + what) as caught:
        hit = ArtifactCache(tmp_path).get_or_build("onnx", "k1", "model.onnx", build)
    assert len(cache_warnings(caught.list)) == 1
    assert not hit.cached and hit.path.read_bytes() == build.payload and build.calls == 1
    again = ArtifactCache(tmp_path).get_or_build(
        "onnx", "k1", "model.onnx", build
    )  # a warning here fails (filterwarnings = error)
    assert again.cached and build.calls == 1
    assert again.build_s == hit.build_s


def failing_load(path: Path) -> object:
    raise RuntimeError(
        f"PytorchStreamReader failed reading zip archive\nfailed finding central directory of {path.name}"
    )


def test_a_builder_whose_output_fails_to_load_twice_raises_cache_error(tmp_path: Path) -> None:
    build = Builder()
    cached = ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", build)
    with (
        pytest.warns(
            PerfgateCacheWarning, match=r"weights\.pt: does not load \(RuntimeError: failed finding"
        ),
        pytest.raises(CacheError) as caught,
    ):
        ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", build, load=failing_load)
    message = str(caught.value)
    assert str(cached.path) in message and "does not load even after it was rebuilt" in message
    assert f"delete {cached.path.parent}, or point --perf-cache / PERFGATE_CACHE at another folder" in message
    assert "RuntimeError: failed finding central directory of weights.pt" in message
    assert build.calls == 2


def test_a_fresh_build_that_fails_to_load_raises_without_a_second_build(tmp_path: Path) -> None:
    build = Builder()
    with pytest.raises(
        CacheError, match=r"weights\.pt was just built but does not load: RuntimeError: failed"
    ):
        ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", build, load=failing_load)
    assert build.calls == 1


def test_a_loader_that_succeeds_after_the_rebuild_returns_its_value(tmp_path: Path) -> None:
    old = Builder(b"written by an older library")
    ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", old)
    new = Builder(b"written by this one")

    def load(path: Path) -> bytes:
        data = path.read_bytes()
        if data.startswith(b"written by an older"):
            raise ValueError("unsupported format version 3")
        return data

    with pytest.warns(
        PerfgateCacheWarning, match=r"does not load \(ValueError: unsupported format version 3\)"
    ):
        hit = ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", new, load=load)
    assert hit.value == b"written by this one" and not hit.cached and new.calls == 1
    again = ArtifactCache(tmp_path).get_or_build("weights", "k1", "weights.pt", new, load=load)
    assert again.cached and again.value == b"written by this one" and new.calls == 1


def test_a_rebuild_that_does_not_read_back_raises_cache_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that does not keep what was written: the rebuilt entry fails its check at once."""
    entry = tmp_path / "onnx" / "k1"
    entry.mkdir(parents=True)
    (entry / "model.onnx").write_bytes(b"older")
    real_replace = os.replace

    def replace_and_damage(src: str, dst: str) -> None:
        real_replace(src, dst)
        if Path(dst) == entry:
            flip_middle_bytes(entry / "model.onnx", count=4)

    monkeypatch.setattr(cache_module.os, "replace", replace_and_damage)
    with pytest.warns(PerfgateCacheWarning), pytest.raises(CacheError) as caught:
        ArtifactCache(tmp_path).get_or_build("onnx", "k1", "model.onnx", Builder())
    message = str(caught.value)
    assert "model.onnx: sha256 mismatch" in message and "straight after it was rebuilt" in message
    assert f"delete {entry}, or point --perf-cache / PERFGATE_CACHE at another folder" in message


def test_stale_staging_folders_of_a_killed_build_are_removed_and_never_used(tmp_path: Path) -> None:
    kind = tmp_path / "onnx"
    stale = kind / ".k1.x7f3a9q"  # tempfile.mkdtemp's name, left by a killed build
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half an export")
    (stale / BUILD_RECORD).write_text('{"build_s": 1.0}')
    newer = kind / ".k1.abc123.staging"
    newer.mkdir()
    other_key = kind / ".k2.zz9"  # another key's build: not ours to remove
    other_key.mkdir()
    build = Builder()
    hit = ArtifactCache(tmp_path).get_or_build("onnx", "k1", "model.onnx", build)
    assert not stale.exists() and not newer.exists() and other_key.exists()
    assert hit.path == kind / "k1" / "model.onnx" and hit.path.read_bytes() == build.payload
    assert sorted(p.name for p in kind.iterdir()) == [".k2.zz9", "k1", "k1.lock"]


def test_a_build_that_fails_leaves_no_staging_folder(tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        path.write_bytes(b"partial")
        raise KeyboardInterrupt  # the closest an in-process test gets to a kill

    with pytest.raises(KeyboardInterrupt):
        ArtifactCache(tmp_path).get_or_build("onnx", "k1", "model.onnx", broken)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["k1.lock"]


# --- atomic_write_text: baselines ---------------------------------------------------------------


def test_a_killed_baseline_write_leaves_an_ignored_tmp_removed_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = tmp_path / "baselines" / "some-runner"
    target = runner / "0001_baseline.json"
    atomic_write_text(target, "{}\n")

    written: list[str] = []
    real_replace = os.replace

    def killed(src: str, dst: str) -> None:
        written.append(os.path.basename(src))
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, '{"new": 1}\n')
    monkeypatch.setattr(cache_module.os, "replace", real_replace)
    (name,) = written
    assert re.fullmatch(rf"\.0001_baseline\.json\.{os.getpid()}\.[^.]+\.tmp", name), name
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", f"baselines/some-runner/{name}"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, f"{name} is not ignored by {REPO / '.gitignore'}"

    # What a kill leaves: a writer's temp file (dead pid, or older than ten minutes) and one of
    # the older format; a live writer's fresh temp file is kept.
    old = time.time() - 3600
    dead = runner / ".0001_baseline.json.999999999.a1b2c3d4.tmp"
    aged = runner / f".0001_baseline.json.{os.getppid()}.e5f6g7h8.tmp"
    legacy = runner / ".0001_baseline.json.k3j_9x2q"
    live = runner / f".0001_baseline.json.{os.getpid()}.zzzzzzzz.tmp"
    unrelated = runner / ".0002_baseline.json.999999999.a1b2c3d4.tmp"
    for path in (dead, aged, legacy, live, unrelated):
        path.write_text("{")
    for path in (dead, aged, legacy, unrelated):
        os.utime(path, (old, old))
    atomic_write_text(target, '{"new": 2}\n')
    assert target.read_text() == '{"new": 2}\n'
    assert not dead.exists() and not aged.exists() and not legacy.exists()
    assert live.exists() and unrelated.exists()


# --- end to end --------------------------------------------------------------------------------


def test_a_run_after_the_cache_was_damaged_rebuilds_and_passes(
    perf_project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "private-cache"
    monkeypatch.setenv("PERFGATE_CACHE", str(cache))
    # A project that turns warnings into errors, as this repository does: the rebuild's warning
    # is shown, and must not fail the case that was repaired.
    perf_project.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:anyio\nfilterwarnings = error\n")
    # In subprocesses: in process, pytest warns that perfgate, which this process imported without
    # assertion rewriting (an editable install), cannot be rewritten, and the error filter fails on it.
    perf_project.runpytest_subprocess("perf", "-k", "fp32", "--perf-report", "a").assert_outcomes(passed=2)
    weights = only_entry(cache, "weights") / "weights.pt"
    onnx = only_entry(cache, "onnx") / "model.onnx"
    flip_tensor_bytes(weights)
    truncate(onnx)

    result = perf_project.runpytest_subprocess("perf", "-k", "fp32", "--perf-report", "b")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines_random(
        [
            f"*PerfgateCacheWarning: perfgate cache: {weights.parent}: weights.pt: sha256 mismatch*rebuilding*",
            f"*PerfgateCacheWarning: perfgate cache: {onnx.parent}: model.onnx: * bytes, * when it was built*",
        ]
    )
    metrics = [
        {
            c["case_id"]: c["accuracy"]["metric"]
            for c in json.loads((perf_project.path / run / "results.json").read_text())["cases"]
        }
        for run in ("a", "b")
    ]
    assert metrics[0] == metrics[1]

    again = perf_project.runpytest_subprocess("perf", "-k", "fp32")
    again.assert_outcomes(passed=2)
    assert "PerfgateCacheWarning" not in again.stdout.str()
