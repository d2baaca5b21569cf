"""pytest-benchmark's own test suite, with perfgate installed and without: the outcomes must agree.

perfgate is a ``pytest11`` plugin, so it loads in every pytest run of its environment, including
pytest-benchmark's own tests. This runs that suite (5.3.1, from its source distribution, as its
``tox.ini`` does: ``pytest -vv --ignore=src`` in the source folder, ``PYTHONPATH=tests``,
``COLUMNS=80``, pytest 9.2.0, its ``xdist-nocov`` factors) in three variants:

* ``without``: a virtual environment without perfgate: pytest-benchmark built from the sdist with
  the extras its ``tox.ini`` installs (aspect, elasticsearch, histogram), ``pygal==3.1.3``,
  ``pygaljs==1.0.2``, ``pytest-xdist==3.8.0`` (its xdist factor) and its ``dev`` dependency
  group (freezegun, nbmake);
* ``with``: a second environment, the same packages plus ``pip install -e PERFGATE`` (perfgate
  and its dependencies, torch pinned to the CPU build by ``constraints-cpu.txt``);
* ``blocked``: the ``with`` environment run with ``-p no:perfgate``. This is the weaker "without":
  it blocks perfgate in the outer pytest process only, and nearly all of pytest-benchmark's tests
  run their inner pytest through ``runpytest_subprocess``, where perfgate loads again.

The separate environment is the faithful "without": nothing of perfgate is importable there.
Each variant runs in a fresh copy of the extracted source, with ``--junitxml``; the script prints
passed/failed/skipped/error counts per variant and every test whose outcome differs from the
``without`` variant, and exits 1 when any does. A run that leaves ``without`` out (``--variants
with,blocked``, after a change to perfgate) compares with that variant's last JUnit file in ``--work``.

Everything lives under ``--work`` (default /tmp/pb-suite): the sdist (downloaded once with
``pip download --no-deps --no-binary :all: pytest-benchmark==5.3.1``), the two environments (made
once; perfgate is re-installed, editable, on every run so that it is the current source), the
source copies and the JUnit files.

    python benchmarks/pytest_benchmark_suite.py
    python benchmarks/pytest_benchmark_suite.py --variants with,blocked --json pb-suite.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERSION = "5.3.1"
PYTEST = "9.2.0"  # tox.ini's pytest92 factor, and perfgate's own environment
# What tox.ini installs beside the package (deps, and the dev dependency group).
# pytest-xdist is its xdist factor: without it five of the tests skip.
TEST_DEPS = [
    "pygal==3.1.3",
    "pygaljs==1.0.2",
    "setuptools>=80",
    "freezegun>=1.5.5",
    "nbmake>=1.5.5",
    "pytest-xdist==3.8.0",
]
EXTRAS = "aspect,elasticsearch,histogram"
VARIANTS = ("without", "with", "blocked")
OUTCOMES = ("passed", "failed", "error", "skipped")


def sh(command: list[str]) -> None:
    """Run a setup command; stop with its output when it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def sdist(work: Path) -> Path:
    """The pytest-benchmark sdist, downloaded once into ``work/sdist``."""
    folder = work / "sdist"
    found = sorted(folder.glob(f"pytest_benchmark-{VERSION}.tar.gz"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"pytest-benchmark=={VERSION}", "-d", str(folder)])  # fmt: skip
        found = sorted(folder.glob(f"pytest_benchmark-{VERSION}.tar.gz"))
    return found[0]


def extract(archive: Path, into: Path) -> Path:
    """A fresh copy of the source tree in ``into``; returns its top folder."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / f"pytest_benchmark-{VERSION}"


def environment(work: Path, name: str, source: Path, perfgate: Path | None) -> Path:
    """The virtual environment ``work/venv-NAME``, made once; perfgate re-installed on every call."""
    venv = work / f"venv-{name}"
    python = venv / "bin" / "python"
    constraints = work / "constraints.txt"
    constraints.write_text(f"pytest=={PYTEST}\npytest-benchmark=={VERSION}\n{(REPO / 'constraints-cpu.txt').read_text()}")  # fmt: skip
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(constraints)]
    made = "\n".join([f"pytest=={PYTEST}", f"pytest-benchmark[{EXTRAS}]=={VERSION}", *TEST_DEPS])
    if not (venv / ".made").exists() or (venv / ".made").read_text() != made:
        shutil.rmtree(venv, ignore_errors=True)
        sh([sys.executable, "-m", "venv", str(venv)])
        sh([*pip, f"pytest=={PYTEST}", f"{source}[{EXTRAS}]", *TEST_DEPS])
        (venv / ".made").write_text(made)
    if perfgate is not None:
        sh([*pip, "-e", str(perfgate)])
    return python


def run_suite(python: Path, source: Path, junit: Path, extra: list[str]) -> tuple[int, str, float]:
    """tox's nocov command in ``source``: exit code, pytest's closing line, wall seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env |= {"COLUMNS": "80", "PYTHONPATH": str(source / "tests"), "PYTHONUNBUFFERED": "yes"}
    # As tox does: the environment's scripts first (tests run ``py.test-benchmark``).
    env |= {
        "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(python.parent.parent),
    }
    command = [str(python), "-m", "pytest", "-vv", "--ignore=src", f"--junitxml={junit}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (junit.with_suffix(".log")).write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("=") and " in " in line]
    return done.returncode, lines[-1].strip("= ") if lines else "(no summary line)", wall


def outcomes(junit: Path) -> dict[str, str]:
    """Test id -> passed, failed, error or skipped, from a JUnit XML file (an error wins)."""
    found: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = next((o for tag, o in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")) if tag in kinds), "passed")  # fmt: skip
        found[test] = "error" if found.get(test) == "error" else outcome
    return found


def differences(reference: dict[str, str], other: dict[str, str]) -> list[str]:
    """One line per test whose outcome differs (or that only one of the two runs has)."""
    return [
        f"{test}: {reference.get(test, 'absent')} -> {other.get(test, 'absent')}"
        for test in sorted(reference.keys() | other.keys())
        if reference.get(test) != other.get(test)
    ]


def source_version(path: Path) -> str:
    """The commit of a perfgate checkout, and whether it has uncommitted changes."""
    done = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty"], capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip() or "(not a git checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/pb-suite"), metavar="DIR", help="sdist, environments, source copies and results (default: /tmp/pb-suite)")  # fmt: skip
    parser.add_argument("--perfgate", type=Path, default=REPO, metavar="PATH", help="the perfgate source installed (editable) in the 'with' environment (default: this checkout)")  # fmt: skip
    parser.add_argument("--variants", default=",".join(VARIANTS), metavar="LIST", help=f"comma-separated, from {', '.join(VARIANTS)} (default: all; 'without' is the reference)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write counts and per-test outcomes as JSON (default: none)")  # fmt: skip
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    work = args.work.resolve()
    print(f"perfgate: {args.perfgate.resolve()} {source_version(args.perfgate)}")
    archive = sdist(work)
    pristine = extract(archive, work / "pristine")
    results: dict[str, dict[str, str]] = {}
    summary: dict[str, dict[str, object]] = {}
    for variant in variants:
        perfgate = None if variant == "without" else args.perfgate.resolve()
        python = environment(work, "without" if perfgate is None else "with", pristine, perfgate)
        source = extract(archive, work / f"src-{variant}")
        extra = ["-p", "no:perfgate"] if variant == "blocked" else []
        load = os.getloadavg()[0]
        code, line, wall = run_suite(python, source, work / f"junit-{variant}.xml", extra)
        results[variant] = outcomes(work / f"junit-{variant}.xml")
        counts = Counter(results[variant].values())
        summary[variant] = {"exit": code, "line": line, "wall_s": round(wall, 1), "load": load, **{o: counts[o] for o in OUTCOMES}}  # fmt: skip
        print(f"{variant:<8} exit {code}  {'  '.join(f'{o} {counts[o]}' for o in OUTCOMES)}  ({line}; {wall:.0f} s, load {load:.2f})")  # fmt: skip
    earlier = work / "junit-without.xml"
    if "without" not in results and earlier.exists():
        # The environment without perfgate does not change with perfgate's code: its last run stands.
        results["without"] = outcomes(earlier)
        counts = Counter(results["without"].values())
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(earlier.stat().st_mtime))
        print(f"without  (earlier run, {when})  {'  '.join(f'{o} {counts[o]}' for o in OUTCOMES)}")
    reference = "without" if "without" in results else variants[0]
    diffs = {v: differences(results[reference], results[v]) for v in variants if v != reference}
    for variant, lines in diffs.items():
        print(f"\n{variant} vs {reference}: {len(lines)} test(s) differ")
        for line in lines:
            print(f"  {line}")
    if args.json:
        document = {"version": VERSION, "pytest": PYTEST, "perfgate": source_version(args.perfgate), "summary": summary, "differences": diffs, "outcomes": results}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    print(f"\nlogs and JUnit files: {work}/junit-*.xml, {work}/junit-*.log")
    return 1 if any(diffs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
