"""An installed backend that fails to import skips its own cases; every other backend runs.

The broken install is real: a package of the backend's module name, first on ``PYTHONPATH``,
whose import raises what a missing shared library raises. It shadows the installed one in a
subprocess run (in-process, the real module may already be imported).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from perfgate.backends import Backend
from perfgate.backends.base import import_problem

OPENVINO_ERROR = "libopenvino.so.2026: cannot open shared object file: No such file or directory"
ORT_ERROR = "libonnxruntime.so.1.99: cannot open shared object file: No such file or directory"


def shadow(folder: Path, module: str, error: str) -> Path:
    """A package ``module`` in ``folder`` whose import raises ``ImportError(error)``."""
    package = folder / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError({error!r})\n")
    return folder


@pytest.fixture
def broken_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def put_first(errors: dict[str, str]) -> None:
        """Shadow each module (name -> its import error) on PYTHONPATH."""
        folder = tmp_path / "shadow"
        for module, error in errors.items():
            shadow(folder, module, error)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))

    return put_first


def test_a_backend_that_fails_to_import_skips_only_its_cases(
    perf_project: pytest.Pytester, broken_path
) -> None:  # type: ignore[no-untyped-def]
    """OpenVINO and ONNX Runtime both installed and both broken, in one project: each skips its
    own case with its own error, and torch_cpu runs (two subprocess runs in all, not two each)."""
    pytest.importorskip("openvino")  # installed here: the shadow is what breaks it
    pytest.importorskip("onnxruntime")
    matrix = perf_project.path / "perf" / "matrix.toml"
    text = matrix.read_text().replace("[techniques.int8_dynamic]\n", "")
    matrix.write_text(text + "\n[backends.openvino_cpu]\n")
    broken_path({"openvino": OPENVINO_ERROR, "onnxruntime": ORT_ERROR})

    # In subprocesses: the shadow only hides a module that the process has not imported yet.
    collected = perf_project.runpytest_subprocess("perf", "--collect-only", "-q", "-k", "torch_cpu")
    assert collected.ret == 0, collected.stdout.str()
    collected.stdout.fnmatch_lines(["*tiny_mlp-fp32-torch_cpu-b1*", "1/3 tests collected (2 deselected)*"])

    result = perf_project.runpytest_subprocess("perf", "-rs", "--benchmark-disable")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] perf/test_inference.py: openvino_cpu: openvino is installed but fails to "
            f"import: ImportError: {OPENVINO_ERROR}",
            "SKIPPED [[]1[]] perf/test_inference.py: onnxruntime_cpu: onnxruntime is installed but fails "
            f"to import: ImportError: {ORT_ERROR}",
        ]
    )


def test_import_problem_names_the_error_once_per_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "perfgate_test_broken_native_module"
    shadow(tmp_path, module, "libfoo.so.3: cannot open shared object file\n(more detail on a second line)")
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = (
        f"{module} is installed but fails to import: ImportError: libfoo.so.3: cannot open shared object file"
    )
    assert import_problem(module) == expected
    (tmp_path / module / "__init__.py").write_text("")  # fixed: still the cached answer in this process
    assert import_problem(module) == expected
    assert import_problem("perfgate_test_module_that_is_not_installed") == (
        "perfgate_test_module_that_is_not_installed is not installed"
    )
    assert import_problem("json") is None
    assert module not in sys.modules


def test_missing_names_a_required_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "perfgate_test_broken_runtime"
    shadow(tmp_path, module, "undefined symbol: _ZN3foo3barEv")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Broken(Backend):
        name = "broken_cpu"
        marker = "broken"
        requires = ("numpy", module)

    assert Broken().missing() == (
        f"broken_cpu: {module} is installed but fails to import: ImportError: undefined symbol: _ZN3foo3barEv"
    )
