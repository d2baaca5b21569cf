"""What an installed perfgate costs a pytest run that never uses it.

pytest loads every ``pytest11`` entry point of the environment, so perfgate's plugin module is
imported by every run, in every project. This builds a throwaway project of plain unit tests
(30 trivial tests in three files, a conftest, a ``pytest.ini``, no perfgate matrix) and times, in
one run and with this interpreter:

* ``python -m pytest --help`` and ``python -m pytest -q`` in that project,
* each with perfgate loaded and with ``-p no:perfgate`` (which blocks the entry point),

interleaved (with/without, then without/with on the next repetition) so that both variants share
the machine's load. It prints the wall time (min and median) and the children's CPU time per
variant, the ratio with/without, and the load average; it fails when a ratio of medians exceeds
``--max-ratio``, after one fresh re-measurement of that command (a burst of load on a shared
machine is not a regression).

It also fails when ``python -X importtime -c "import perfgate.plugin"`` (or ``import perfgate``)
imports torch, numpy or any other heavy or backend library.

    python benchmarks/import_cost.py                 # 7 repetitions, limit 1.15x
    python benchmarks/import_cost.py -n 11 --json import-cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"--help": ["--help"], "-q": ["-q"]}
VARIANTS = {"with": [], "without": ["-p", "no:perfgate"]}
# Top-level packages that a pytest run which never touches a perf case must not import.
HEAVY = (
    "torch", "numpy", "scipy", "sklearn", "onnx", "onnxruntime", "onnxconverter_common", "openvino",
    "nncf", "tensorflow", "tensorrt", "ai_edge_litert", "litert_torch", "jax", "matplotlib", "pandas",
    "ruptures",
)  # fmt: skip
TEST_FILE = """
import pytest


@pytest.mark.parametrize("n", range(5))
def test_square(n):
    assert n * n >= n


def test_sum(numbers):
    assert sum(numbers) == 6


def test_strings():
    assert "pytest".upper() == "PYTEST"


def test_dict():
    assert {"a": 1} | {"b": 2} == {"a": 1, "b": 2}


def test_raises():
    with pytest.raises(ZeroDivisionError):
        1 / 0


def test_tmp(tmp_path):
    (tmp_path / "f").write_text("x")
    assert (tmp_path / "f").read_text() == "x"


def test_sorted():
    assert sorted([3, 1, 2]) == [1, 2, 3]
"""
CONFTEST = """
import pytest


@pytest.fixture
def numbers():
    return [1, 2, 3]
"""


def make_project(root: Path) -> None:
    """Three files of ten plain unit tests each, a conftest and a ``pytest.ini``: 30 tests."""
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (root / "tests").mkdir()
    (root / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    for name in ("test_one.py", "test_two.py", "test_three.py"):
        (root / "tests" / name).write_text(TEST_FILE)


def clean_env() -> dict[str, str]:
    """This environment without what would change which plugins load or which options apply."""
    env = dict(os.environ)
    for name in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS"):
        env.pop(name, None)
    return env


@dataclass
class Samples:
    """Wall and CPU seconds of the runs of one command in one variant."""

    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)


def timed(args: list[str], project: Path, env: dict[str, str]) -> tuple[float, float]:
    """One pytest process: its wall time and its CPU time (user + system), in seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=project, env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(
            f"pytest {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(
    commands: list[str], reps: int, project: Path, env: dict[str, str]
) -> dict[str, dict[str, Samples]]:
    """``reps`` runs of each command in each variant, interleaved, the order flipped every repetition."""
    samples = {c: {v: Samples() for v in VARIANTS} for c in commands}
    for rep in range(reps):
        order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
        for command in commands:
            for variant in order:
                wall, cpu = timed([*VARIANTS[variant], *COMMANDS[command]], project, env)
                samples[command][variant].wall_s.append(wall)
                samples[command][variant].cpu_s.append(cpu)
    return samples


def summary(samples: dict[str, Samples]) -> dict[str, float]:
    """Min and median wall time per variant, median CPU time, and the ratios with/without."""
    out: dict[str, float] = {}
    for variant, s in samples.items():
        out[f"{variant}_min_s"] = min(s.wall_s)
        out[f"{variant}_median_s"] = statistics.median(s.wall_s)
        out[f"{variant}_cpu_median_s"] = statistics.median(s.cpu_s)
    out["ratio_min"] = out["with_min_s"] / out["without_min_s"]
    out["ratio_median"] = out["with_median_s"] / out["without_median_s"]
    return out


def check_loaded(project: Path, env: dict[str, str]) -> None:
    """The "with" variant really loads perfgate and the "without" one really does not."""
    for variant, expected in (("with", True), ("without", False)):
        done = subprocess.run([sys.executable, "-m", "pytest", *VARIANTS[variant], "--version", "--version"], cwd=project, env=env, capture_output=True, text=True)  # fmt: skip
        loaded = any(
            line.strip().startswith("perfgate-") for line in (done.stdout + done.stderr).splitlines()
        )
        if loaded != expected:
            sys.exit(f"variant {variant!r}: perfgate {'not ' if expected else ''}loaded; is it installed in {sys.executable}?")  # fmt: skip


def heavy_imports(statement: str, project: Path, env: dict[str, str]) -> tuple[list[str], int]:
    """The heavy top-level packages that ``statement`` imports, and the number of perfgate modules."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], cwd=project, env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{statement!r} failed:\n{done.stderr[-2000:]}")
    names = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2]  # fmt: skip
    tops = {name.split(".")[0] for name in names}
    return sorted(tops & set(HEAVY)), sum(1 for name in names if name.split(".")[0] == "perfgate")


def check_imports(project: Path, env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """What ``import perfgate`` and ``import perfgate.plugin`` import, printed; a failure per heavy one."""
    imports: dict[str, Any] = {}
    failures = []
    for statement in ("import perfgate", "import perfgate.plugin"):
        heavy, own = heavy_imports(statement, project, env)
        imports[statement] = {"heavy": heavy, "perfgate_modules": own}
        print(f"python -X importtime -c {statement!r}: {own} perfgate modules, heavy: {', '.join(heavy) or 'none'}")  # fmt: skip
        if heavy:
            failures.append(f"{statement!r} imports {', '.join(heavy)}")
    return imports, failures


def commit() -> str:
    """The perfgate commit measured, ``-dirty`` with uncommitted changes."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "(not a git checkout)"


def print_table(results: dict[str, dict[str, float]], max_ratio: float) -> None:
    print(f"{'command':<16}{'with min':>10}{'median':>9}{'cpu':>7}  {'without min':>12}{'median':>9}{'cpu':>7}  {'ratio min':>10}{'median':>8}")  # fmt: skip
    for command, r in results.items():
        flag = "" if r["ratio_median"] <= max_ratio else f"  > {max_ratio:.2f}x"
        print(
            f"{'pytest ' + command:<16}{r['with_min_s']:>9.2f}s{r['with_median_s']:>8.2f}s{r['with_cpu_median_s']:>6.2f}s"
            f"  {r['without_min_s']:>11.2f}s{r['without_median_s']:>8.2f}s{r['without_cpu_median_s']:>6.2f}s"
            f"  {r['ratio_min']:>9.2f}x{r['ratio_median']:>7.2f}x{flag}"
        )


def write_json(path: Path, reps: int, document: dict[str, Any]) -> None:
    header = {"commit": commit(), "python": sys.executable, "reps": reps}
    path.write_text(json.dumps(header | document, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--reps", type=int, default=7, metavar="N", help="runs of each command in each variant (default: 7)")  # fmt: skip
    parser.add_argument("--max-ratio", type=float, default=1.15, metavar="R", help="largest allowed ratio of median wall times, with/without perfgate (default: 1.15)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the samples and the summary as JSON (default: none)")  # fmt: skip
    args = parser.parse_args(argv)
    env = clean_env()
    load_before = os.getloadavg()
    print(f"perfgate {commit()}, {sys.executable}, {args.reps} runs per command and variant, load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="import-cost-") as tmp:
        project = Path(tmp)
        make_project(project)
        imports, failures = check_imports(project, env)
        check_loaded(project, env)
        measure(list(COMMANDS), 1, project, env)  # bytecode and file caches: not counted
        samples = measure(list(COMMANDS), args.reps, project, env)
        results = {c: summary(s) for c, s in samples.items()}
        # A heavy import fails the check by itself: no second chance for the timings then.
        retried = [c for c, r in results.items() if r["ratio_median"] > args.max_ratio and not failures]
        first = {c: results[c] for c in retried}
        if retried:
            print_table(first, args.max_ratio)
            print(f"above {args.max_ratio:.2f}x: {', '.join(retried)}; measuring again once")
            again = measure(retried, args.reps, project, env)
            samples.update(again)
            results.update({c: summary(s) for c, s in again.items()})
    load_after = os.getloadavg()
    print_table(results, args.max_ratio)
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    failures += [f"pytest {c}: {r['ratio_median']:.2f}x > {args.max_ratio:.2f}x" for c, r in results.items() if r["ratio_median"] > args.max_ratio]  # fmt: skip
    if args.json:
        document = {
            "max_ratio": args.max_ratio,
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
            "imports": imports,
            "samples": {c: {v: asdict(s) for v, s in by.items()} for c, by in samples.items()},
            "summary": results,
            "first_attempt": first,
            "failures": failures,
        }
        write_json(args.json, args.reps, document)
    for failure in failures:
        print(f"FAIL: {failure}")
    print("ok" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
