"""Hooks perfgate offers to plugins and conftest files."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_perfgate_register(backends: Any, techniques: Any, metrics: Any) -> None:
    """Register your own backends, techniques or metrics before the matrix is read.

    Each argument is a :class:`perfgate.registry.Registry`. In a ``conftest.py``::

        def pytest_perfgate_register(backends, techniques, metrics):
            backends.register("mybackend_cpu", "my_pkg.backend:BACKEND")
            metrics.register("f1", "my_pkg.metrics:f1_score")
    """


@pytest.hookspec(firstresult=True)
def pytest_perfgate_runner_id(config: pytest.Config, hardware: Any) -> str | None:
    """Return the id of this runner, which names its baselines folder.

    Called only when neither ``--perf-runner`` nor ``PERFGATE_RUNNER`` is set. In a ``conftest.py``::

        def pytest_perfgate_runner_id(config, hardware):
            return "ci-" + hardware.runner_id()
    """


@pytest.hookspec
def pytest_perfgate_case_result(config: pytest.Config, result: Any) -> None:
    """Called on the controller with each finished :class:`perfgate.results.CaseResult`."""
