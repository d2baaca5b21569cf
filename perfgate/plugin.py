"""The entry point pytest loads in every run of an environment where perfgate is installed.

It must cost nothing and change nothing outside a perfgate run, so it holds only perfgate's
options and the activation rule: a run is a perfgate run when its matrix file exists (the
``--perf-matrix`` option, else the ``perf_matrix`` ini value, ``perf/matrix.toml`` under the
rootdir). Only then does it import and register :mod:`perfgate.suite_plugin`, which holds the
hooks, the ``perf_case`` fixture and everything heavy. In any other run pytest and pytest-benchmark
behave exactly as without perfgate (docs/pytest-citizen.md); ``-p no:perfgate`` turns it off.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from perfgate import hookspec

# Options a conftest of the project defined before perfgate could: theirs wins, perfgate reads
# its default for them (a clash must not crash the user's project).
SHADOWED = pytest.StashKey[dict[str, str]]()
ACTIVE_PLUGIN = "perfgate-suite"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("perf_matrix", "perfgate matrix file, relative to the rootdir", default="perf/matrix.toml")
    parser.addini("perf_baselines", "perfgate baselines folder, relative to the rootdir", default="baselines")


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    """Add perfgate's options after the project's conftests have added theirs.

    An option name the project already uses (its own ``--perf-report``, say) stays the project's:
    perfgate leaves its own out instead of failing the run with argparse's "already used".
    """
    result = yield
    group = parser.getgroup("perfgate", "perfgate: ML inference benchmarks with accuracy and regression gates")
    shadowed = early_config.stash.setdefault(SHADOWED, {})
    for names, attrs in OPTIONS:
        try:
            group.addoption(*names, **attrs)
        except (ValueError, argparse.ArgumentError):
            shadowed[_dest(names)] = names[0]
    return result


def option(config: pytest.Config, name: str) -> Any:
    """The value of perfgate's option ``name`` (its dest), or its default where the project's own
    option of the same name shadows it."""
    if name in config.stash.get(SHADOWED, {}):
        return DEFAULTS.get(name)
    return config.getoption(name, DEFAULTS.get(name))


def rooted(config: pytest.Config, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


def matrix_path(config: pytest.Config) -> Path:
    return rooted(config, option(config, "perf_matrix") or config.getini("perf_matrix"))


def pytest_configure(config: pytest.Config) -> None:
    path = matrix_path(config)
    if not path.is_file():
        if option(config, "perf_matrix"):
            raise pytest.UsageError(f"perfgate: --perf-matrix {option(config, 'perf_matrix')}: no such file ({path})")
        given = [f"--{name.replace('_', '-')}" for name in _given_options(config)]
        if given:
            raise pytest.UsageError(
                f"perfgate: {' '.join(given)} given, but there is no perfgate matrix at {path}: pass "
                "--perf-matrix PATH, or set perf_matrix in the ini file (docs/pytest-citizen.md)"
            )
        return  # not a perfgate run: register nothing, import nothing
    from perfgate import suite_plugin

    config.pluginmanager.register(suite_plugin, ACTIVE_PLUGIN)


def _given_options(config: pytest.Config) -> list[str]:
    """perfgate's options that this run sets to something other than their default."""
    shadowed = config.stash.get(SHADOWED, {})
    return [
        _dest(names)
        for names, _ in OPTIONS
        if _dest(names) not in shadowed
        and config.getoption(_dest(names), None) not in (None, False, DEFAULTS.get(_dest(names)))
    ]


def _dest(names: tuple[str, ...]) -> str:
    return names[0].lstrip("-").replace("-", "_")


OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--perf-matrix",), {"metavar": "PATH", "help": "matrix file; giving it makes the run a perfgate run (default: the perf_matrix ini value, perf/matrix.toml, when that file exists)"}),
    (("--perf-runner",), {"metavar": "NAME", "help": "runner id naming the baselines folder (default: PERFGATE_RUNNER, else derived from the hardware)"}),
    (("--perf-profile",), {"metavar": "NAME", "help": "[profiles.NAME] of the matrix to run (default: PERFGATE_PROFILE, else 'default' if defined, else all)"}),
    (("--perf-baselines",), {"metavar": "DIR", "help": "folder holding one baselines folder per runner (default: the perf_baselines ini value, baselines)"}),
    (("--perf-cache",), {"metavar": "DIR", "help": "artifact cache (default: PERFGATE_CACHE, else .perfgate_cache in the rootdir)"}),
    (("--perf-refresh-baselines",), {"action": "store_true", "help": "write this runner's baselines for the cases that ran and passed their accuracy gates (default: off)"}),
    (("--perf-refresh-changed",), {"action": "store_true", "help": "like --perf-refresh-baselines, but only for the cases whose regression verdict is fail or improved; needs --benchmark-compare (default: off)"}),
    (("--perf-prune-baselines",), {"action": "store_true", "help": "with --perf-refresh-baselines, also remove baseline cases that are no longer in the matrix (default: off)"}),
    (("--perf-require-baseline",), {"action": "store_true", "help": "under --benchmark-compare, fail a case that has no baseline instead of reporting it as new (default: off)"}),
    (("--perf-repeats",), {"type": int, "metavar": "K", "help": "measure each case in K sessions, spread over the run (round-robin after the other cases, a fresh runtime session each); the gate judges the median of their p50s (default: 3 when refreshing baselines, else 1)"}),
    (("--perf-history",), {"metavar": "PATH", "help": "append every case's sessions to this SQLite history of runs (default: PERFGATE_HISTORY, else the matrix's [history] path, else none; docs/history.md)"}),
    (("--perf-gate",), {"choices": ("baseline", "history"), "default": "baseline", "help": "what a case is judged against: 'baseline', this runner's baseline file under --benchmark-compare; 'history', the last accepted runs of this machine in the history store, which turns the gate on by itself (default: baseline)"}),
    (("--perf-isolate",), {"action": "store_true", "help": "run each case in a child process, so that a crash or a hang fails only that case (default: off; docs/failure-handling.md)"}),
    (("--perf-serve",), {"metavar": "FDS", "help": argparse.SUPPRESS}),  # an isolation child's pipes
    (("--perf-trace-failures",), {"action": "store_true", "help": "profile each case whose regression is confirmed, under its backend's own profiler, and show in the report the operators whose time grew most against the baseline's profile (default: on under --benchmark-compare)"}),
    (("--perf-no-trace-failures",), {"action": "store_true", "help": "do not profile the cases that regressed (default: they are, under --benchmark-compare)"}),
    (("--perf-trace-case",), {"action": "append", "metavar": "ID", "help": "profile this case after it is timed (repeat it for several; default: none)"}),
    (("--perf-energy-s",), {"type": float, "default": 1.0, "metavar": "SECONDS", "help": "seconds of each case's energy loop after its timing, where NVML (GPU) or RAPL (CPU) measures it; elsewhere the reason is reported at no cost; 0: do not measure (default: 1.0; docs/energy.md)"}),
    (("--perf-report",), {"metavar": "DIR", "help": "write results.json, report.md and a Pareto plot per model (pareto-MODEL.png/.svg, needs matplotlib) into DIR (default: no report)"}),
]
DEFAULTS: dict[str, Any] = {_dest(names): attrs.get("default") for names, attrs in OPTIONS}
