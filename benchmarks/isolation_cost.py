"""What ``--perf-isolate`` costs, and whether the child's timings agree with in-process ones.

Runs one selection of the reference suite as separate ``pytest`` processes, alternating
in-process and ``--perf-isolate`` runs ``--pairs`` times (warm artifact cache: a first,
untimed run builds everything), and reads each run's ``results.json``. Prints:

* wall time per run, both ways, and the isolation overhead (median over pairs);
* timing agreement: per case, the p50 of an isolated run over the p50 of the in-process run of
  the same pair; against it the between-session noise, the p50 of one in-process run over the
  next one's. Isolation agrees when its spread is no wider than that noise.

    python benchmarks/isolation_cost.py -k "digits_resnet and fp32" --pairs 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(selection: str, isolate: bool, out: Path) -> tuple[float, dict[str, float]]:
    """One ``pytest perf`` process; its wall time and each case's p50 in ms."""
    command = [sys.executable, "-m", "pytest", "perf", "-q", "-p", "no:cacheprovider", "-k", selection]
    command += ["--perf-report", str(out)]
    command += ["--perf-isolate"] if isolate else []
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"pytest failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cases = json.loads((out / "results.json").read_text())["cases"]
    return wall, {c["case_id"]: c["latency"]["p50_ms"] for c in cases if c.get("latency")}


def spread(ratios: list[float]) -> str:
    """Median and 90th percentile of |log ratio|, as percentages."""
    logs = sorted(abs(math.log(r)) for r in ratios)
    p90 = logs[min(len(logs) - 1, int(0.9 * len(logs)))]
    return f"median {math.expm1(statistics.median(logs)):.1%}, p90 {math.expm1(p90):.1%} (n={len(logs)})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-k", default="digits_resnet and fp32", help="pytest -k selection of perf cases")
    parser.add_argument("--pairs", type=int, default=3, help="in-process/isolated pairs, alternating")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        run(args.k, False, Path(tmp) / "warm")  # builds whatever the cache lacks; not counted
        inproc: list[tuple[float, dict[str, float]]] = []
        isolated: list[tuple[float, dict[str, float]]] = []
        for pair in range(args.pairs):
            order = [False, True] if pair % 2 == 0 else [True, False]  # alternate: no drift bias
            for isolate in order:
                wall, p50 = run(args.k, isolate, Path(tmp) / f"{pair}-{isolate}")
                (isolated if isolate else inproc).append((wall, p50))
                print(
                    f"pair {pair + 1}: {'isolated  ' if isolate else 'in-process'} wall {wall:6.1f} s, {len(p50)} cases"
                )
    walls_in = [w for w, _ in inproc]
    walls_iso = [w for w, _ in isolated]
    overhead = [b - a for a, b in zip(walls_in, walls_iso, strict=True)]
    cases = len(inproc[0][1])
    print(
        f"\nwall time: in-process median {statistics.median(walls_in):.1f} s, isolated {statistics.median(walls_iso):.1f} s"
    )
    print(f"isolation overhead: median {statistics.median(overhead):+.1f} s per run of {cases} cases "
          f"({statistics.median(overhead) / cases:+.2f} s per case, x{statistics.median(walls_iso) / statistics.median(walls_in):.2f})")  # fmt: skip
    agreement = [
        iso[c] / ref[c] for (_, ref), (_, iso) in zip(inproc, isolated, strict=True) for c in ref if c in iso
    ]
    noise = [b[c] / a[c] for (_, a), (_, b) in itertools.pairwise(inproc) for c in a if c in b]
    print(f"p50 isolated / in-process (same pair):   {spread(agreement)}")
    print(f"p50 in-process / in-process (next pair): {spread(noise)}")
    print(f"median ratio isolated / in-process: x{statistics.median(agreement):.3f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
