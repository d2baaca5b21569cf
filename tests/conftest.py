"""Shared fixtures of perfgate's own tests.

End-to-end tests drive the plugin through ``pytester`` on a small matrix of tiny models defined
in ``tests/tiny_models.py``: real torch, real ONNX Runtime, just small enough to keep CI fast.
The artifact cache is shared across tests, so the tiny models train once per run.
"""

from __future__ import annotations

# In-process pytester runs drop every module a run imported when it ends. Some cannot be imported
# twice in one process: numpy's fft extension (scipy.stats imports it for the gate's test) and
# torch._dynamo, which registers a torch op library (load_state_dict imports it lazily), and onnx,
# whose second import aborts the process (SIGABRT, no message: its protobuf descriptors register
# twice), OpenVINO (a second import finds its native module half-registered: "No module named
# 'openvino._pyopenvino.util'") and TVM (its FFI registry). They are imported once here, before
# any run, and stay; an optional one only where it is installed.
import contextlib
import importlib
import os
import textwrap
from pathlib import Path

import onnx  # noqa: F401
import pytest
import scipy.stats  # noqa: F401
import torch._dynamo  # noqa: F401

for _optional in ("openvino", "tvm"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_optional)

TESTS = Path(__file__).parent
REPO = TESTS.parent

# What every test matrix starts with: the tests folder on the path, rounds and a threshold for tests.
MATRIX_HEADER = """
pythonpath = ["{tests}"]
batch_sizes = [1]

[regression]
# Far beyond what load does to a 40 us call on this shared 2-core runner (x1.9 between sessions,
# seen while two benchmark processes ran): a test that checks the gate's sensitivity injects a
# slowdown of x10 or more, and no other test may pass or fail with the machine's load.
threshold = 1.0

[timing]
warmup_rounds = 5
warmup_time_s = 0.0
min_rounds = 30
min_time_s = 0.05

"""

TINY_MATRIX = MATRIX_HEADER + """[models.tiny_mlp]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"

[techniques.fp32]
[techniques.int8_dynamic]

[backends.torch_cpu]
[backends.onnxruntime_cpu]
"""

# The tiny MLP with a real busy-wait of PERFGATE_TEST_DELAY_US per call (tests/tiny_models.py).
SLOWED_MODEL = """[models.slowed_mlp]
factory = "tiny_models:slowed_mlp"
data = "tiny_models:blobs"
metric = "top1"
"""

TEST_FILE = """
def test_case(perf_case, benchmark):
    perf_case.build()
    perf_case.check_accuracy()
    perf_case.time(benchmark)
    perf_case.check_regression()
"""


@pytest.fixture(autouse=True)
def private_run_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own registry of running perfgate runs (perfgate.concurrency): another process
    timing on the machine (a second test session) is a real concurrent run, which would rightly
    keep timings out of the baselines that tests check."""
    folder = tmp_path / "run-registry"
    monkeypatch.setenv("PERFGATE_RUN_REGISTRY", str(folder))
    return folder


@pytest.fixture(autouse=True)
def inner_runs_outside_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's own pytest runs are not xdist workers, even when the test runs on one.

    pytest-xdist exports ``PYTEST_XDIST_WORKER`` (and its siblings) to the worker's environment,
    which a pytester run inherits, in process or in a subprocess; pytest-benchmark reads it and
    disables timing, so every case of the inner run would go untimed and the gates unjudged.
    """
    for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the whole test run (tiny models train once), one per xdist worker:
    concurrent runs on one cache are perfgate's own business, tested where a test means it."""
    return Path(os.environ.get("PERFGATE_TEST_CACHE") or tmp_path_factory.mktemp("perfgate-cache"))


@pytest.fixture
def perf_project(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A pytester project with the tiny matrix at perf/matrix.toml and the standard test file."""
    return write_project(pytester, shared_cache, monkeypatch, TINY_MATRIX)


def write_project(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch, matrix: str
) -> pytest.Pytester:
    """A pytester project with ``matrix`` (``{tests}`` filled in) at perf/matrix.toml, the standard
    test file, the shared artifact cache and a fixed runner id."""
    monkeypatch.setenv("PERFGATE_CACHE", str(shared_cache))
    monkeypatch.setenv("PERFGATE_RUNNER", "test-runner")
    monkeypatch.delenv("PERFGATE_PROFILE", raising=False)
    (pytester.path / "perf").mkdir()
    (pytester.path / "perf" / "matrix.toml").write_text(matrix.format(tests=TESTS.as_posix()))
    (pytester.path / "perf" / "test_inference.py").write_text(textwrap.dedent(TEST_FILE))
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:anyio\n")
    return pytester
