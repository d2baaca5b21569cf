"""Classical models (scikit-learn, XGBoost, LightGBM): the model kind, the sklearn backend, the
conversion to ONNX, the regression metrics, and a whole run, with the real libraries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("skl2onnx", reason="the classical extra is not installed")
pytest.importorskip("xgboost", reason="the classical extra is not installed")
pytest.importorskip("lightgbm", reason="the classical extra is not installed")

from tiny_estimators import (
    cancer,
    diabetes,
    digit_pixels,
    scaled_forest,
    tiny_lightgbm,
    tiny_logreg,
    tiny_regressor,
    tiny_xgboost,
)

from conftest import MATRIX_HEADER, TESTS, write_project
from perfgate.accuracy import MetricError, mae, mse, r2
from perfgate.backends import BACKENDS, BuildRequest, RunSettings, predict
from perfgate.backends.estimator_onnx import ConversionError, predict_outputs
from perfgate.backends.onnx_export import ExportMismatchError
from perfgate.cache import ArtifactCache
from perfgate.data import ModelData
from perfgate.matrix import MatrixError, load_matrix
from perfgate.model_kinds import CLASSICAL, MODEL_KINDS
from perfgate.models import ModelContext

CLASSICAL_MATRIX = MATRIX_HEADER + """
[threads]
intra_op = 1
inter_op = 1

[models.tiny_mlp]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"

[models.tiny_xgb]
kind = "classical"
factory = "tiny_estimators:tiny_xgboost"
data = "tiny_estimators:cancer"
metric = "top1"

[models.tiny_reg]
kind = "classical"
factory = "tiny_estimators:tiny_regressor"
data = "tiny_estimators:diabetes"
metric = "mae"
batch_sizes = [1, 64]

[techniques.fp32]
batch_sizes = [1, 8]
[techniques.int8_dynamic]
[techniques.int8_static]

[backends.torch_cpu]
[backends.sklearn]
[backends.onnxruntime_cpu]
[backends.openvino_cpu]
"""


def write_matrix(folder: Path, text: str = CLASSICAL_MATRIX) -> Path:
    path = folder / "matrix.toml"
    path.write_text(text.format(tests=TESTS.as_posix()))
    return path


def context(tmp_path: Path, data: ModelData, lines: list[str] | None = None) -> ModelContext:
    progress = lines.append if lines is not None else (lambda line: None)
    return ModelContext("m", data, ArtifactCache(tmp_path / "cache"), {}, progress)


def request_for(tmp_path: Path, estimator: Any, data: ModelData, lowering: str = "none") -> BuildRequest:
    return BuildRequest(
        case_id=f"m-{lowering}-b1",
        model=estimator,
        model_key=MODEL_KINDS[CLASSICAL].fingerprint(estimator),
        lowering=lowering,
        options={},
        data=data,
        batch_size=1,
        cache=ArtifactCache(tmp_path / "cache"),
        model_kind=CLASSICAL,
    )


def outputs_on(
    backend: str, request: BuildRequest, threads: int | None = 1
) -> tuple[np.ndarray, dict[str, Any]]:
    chosen = BACKENDS.get(backend)
    session = chosen.load(chosen.build(request), request, RunSettings(threads, threads))
    try:
        return predict(session, request.data.eval_inputs, 7), dict(session.settings)
    finally:
        session.close()


# ---- the matrix: which combinations a classical model gets ------------------------------------


def test_a_classical_model_gets_only_the_backends_and_techniques_that_run_it(tmp_path: Path) -> None:
    matrix = load_matrix(write_matrix(tmp_path))
    ids = sorted(case.id for case in matrix.cases)
    assert ids == sorted([
        # the torch model: never on sklearn
        "tiny_mlp-fp32-torch_cpu-b1", "tiny_mlp-fp32-torch_cpu-b8",
        "tiny_mlp-fp32-onnxruntime_cpu-b1", "tiny_mlp-fp32-onnxruntime_cpu-b8",
        "tiny_mlp-fp32-openvino_cpu-b1", "tiny_mlp-fp32-openvino_cpu-b8",
        "tiny_mlp-int8_dynamic-torch_cpu-b1", "tiny_mlp-int8_dynamic-onnxruntime_cpu-b1",
        "tiny_mlp-int8_static-torch_cpu-b1", "tiny_mlp-int8_static-onnxruntime_cpu-b1",
        "tiny_mlp-int8_static-openvino_cpu-b1",
        # a classical model: never on torch, never a static INT8 (a torch-level calibration)
        "tiny_xgb-fp32-sklearn-b1", "tiny_xgb-fp32-sklearn-b8",
        "tiny_xgb-fp32-onnxruntime_cpu-b1", "tiny_xgb-fp32-onnxruntime_cpu-b8",
        "tiny_xgb-fp32-openvino_cpu-b1", "tiny_xgb-fp32-openvino_cpu-b8",
        "tiny_xgb-int8_dynamic-onnxruntime_cpu-b1",
        # the model's batch sizes win over the technique's
        "tiny_reg-fp32-sklearn-b1", "tiny_reg-fp32-sklearn-b64",
        "tiny_reg-fp32-onnxruntime_cpu-b1", "tiny_reg-fp32-onnxruntime_cpu-b64",
        "tiny_reg-fp32-openvino_cpu-b1", "tiny_reg-fp32-openvino_cpu-b64",
        "tiny_reg-int8_dynamic-onnxruntime_cpu-b1", "tiny_reg-int8_dynamic-onnxruntime_cpu-b64",
    ])  # fmt: skip
    excluded = {e.combination: e.reason for e in matrix.excluded}
    assert excluded["tiny_mlp-fp32-sklearn"] == "sklearn runs no torch model (it runs classical models)"
    assert excluded["tiny_xgb-fp32-torch_cpu"] == "torch_cpu runs no classical model (it runs torch models)"
    assert excluded["tiny_xgb-int8_static-onnxruntime_cpu"] == (
        "int8_static applies to no classical model (only to onnx models and torch models)"
    )
    markers = {case.id: case.markers for case in matrix.cases}
    assert "classical" in markers["tiny_xgb-fp32-onnxruntime_cpu-b1"]
    assert "classical" not in markers["tiny_mlp-fp32-onnxruntime_cpu-b1"]
    assert {case.model.metric_direction for case in matrix.cases if case.model.name == "tiny_reg"} == {
        "lower"
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            (
                'kind = "classical"\nfactory = "tiny_estimators:tiny_xgboost"',
                'kind = "sklearn"\nfactory = "tiny_estimators:tiny_xgboost"',
            ),
            '[models.tiny_xgb] kind = "sklearn": the factory\'s kind of model is one of "torch" (a torch.nn.Module); '
            '"classical" (a fitted estimator with scikit-learn\'s API (scikit-learn, XGBoost, LightGBM))',
        ),
        (
            ('metric = "mae"', 'metric = "mae"\nmetric_direction = "higher"'),
            '[models.tiny_reg] metric_direction = "higher" contradicts metric mae, for which lower is better: '
            "remove metric_direction (a registered metric knows its direction)",
        ),
    ],
)
def test_a_wrong_kind_or_a_contradicted_direction_is_refused(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = CLASSICAL_MATRIX.replace(*edit)
    assert text != CLASSICAL_MATRIX
    with pytest.raises(MatrixError) as info:
        load_matrix(write_matrix(tmp_path, text))
    assert message in str(info.value)


# ---- metrics ------------------------------------------------------------------------------------


def test_regression_metrics_literal_values() -> None:
    outputs = np.array([[1.0], [3.0], [5.0], [7.0]], dtype=np.float32)
    targets = np.array([2.0, 2.0, 5.0, 9.0], dtype=np.float32)
    assert mae(outputs, targets) == pytest.approx(1.0)  # (1 + 1 + 0 + 2) / 4
    assert mse(outputs, targets) == pytest.approx(1.5)  # (1 + 1 + 0 + 4) / 4
    # 1 - 6 / sum((t - 4.5)^2) = 1 - 6 / (6.25 + 6.25 + 0.25 + 20.25)
    assert r2(outputs, targets) == pytest.approx(1 - 6 / 33)
    assert mae(outputs[:, 0], targets) == pytest.approx(1.0)  # (N,) outputs too
    with pytest.raises(MetricError, match=r"one output per row, got outputs of shape \(4, 2\)"):
        mae(np.ones((4, 2), dtype=np.float32), targets)
    with pytest.raises(MetricError, match="constant targets"):
        r2(outputs, np.ones(4, dtype=np.float32))


# ---- fitting, converting and running the real estimators -------------------------------------


@pytest.mark.parametrize(
    ("factory", "data"),
    [
        (tiny_xgboost, cancer),
        (tiny_lightgbm, cancer),
        (tiny_logreg, cancer),
        (tiny_regressor, diabetes),
        (scaled_forest, digit_pixels),
    ],
)
def test_every_onnx_backend_follows_the_estimator(tmp_path: Path, factory: Any, data: Any) -> None:
    """The conversion is validated and renamed to perfgate's names; ONNX Runtime runs every one
    of them within the FP32 tolerance of the estimator's own outputs, on the sklearn backend too."""
    import onnx

    model_data = data()
    estimator = factory(context(tmp_path, model_data))
    request = request_for(tmp_path, estimator, model_data)
    expected = predict_outputs(estimator, model_data.eval_inputs)
    reference, settings = outputs_on("sklearn", request)
    np.testing.assert_allclose(
        reference, expected, rtol=1e-5, atol=1e-6
    )  # batches of 7 vs one: BLAS rounding
    assert settings["intra_op_threads"] == 1
    onnx_outputs, _ = outputs_on("onnxruntime_cpu", request)
    assert onnx_outputs.shape == expected.shape
    assert float(np.max(np.abs(onnx_outputs - expected))) <= 1e-4 + 1e-5 * float(np.max(np.abs(expected)))
    graph = onnx.load(str(BACKENDS.get("onnxruntime_cpu").build(request).path))
    onnx.checker.check_model(graph)  # a standard-domain opset for the output's Identity, too
    assert [v.name for v in graph.graph.input] == ["input"]
    assert [v.name for v in graph.graph.output] == ["output"]


def test_the_sklearn_backend_honours_the_threads_and_restores_the_pools(tmp_path: Path) -> None:
    from threadpoolctl import threadpool_info

    data = cancer()
    estimator = tiny_xgboost(context(tmp_path, data))
    request = request_for(tmp_path, estimator, data)
    before = {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()}
    backend = BACKENDS.get("sklearn")
    session = backend.load(backend.build(request), request, RunSettings(1, 1))
    assert session.settings["n_jobs_params"] == ["n_jobs"]
    assert session.estimator.get_params()["n_jobs"] == 1
    assert session.estimator is not estimator  # the case's own copy: the session's model is untouched
    assert "openmp" in session.settings["thread_pools_limited"]  # XGBoost's OpenMP pool
    assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    session.close()
    assert {pool["filepath"]: pool["num_threads"] for pool in threadpool_info()} == before


def test_a_conversion_that_differs_from_the_estimator_fails_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perfgate.backends import estimator_onnx

    data = cancer()
    estimator = tiny_logreg(context(tmp_path, data))
    real = estimator_onnx.predict_outputs
    monkeypatch.setattr(estimator_onnx, "predict_outputs", lambda e, x: real(e, x)[:, ::-1].copy())
    with pytest.raises(
        ExportMismatchError,
        match=r"m-none-b1: the ONNX conversion differs from the estimator by max abs .* on [0-9]+ of 169 eval rows",
    ):
        BACKENDS.get("onnxruntime_cpu").build(request_for(tmp_path, estimator, data))


def test_an_estimator_without_a_converter_names_the_fix(tmp_path: Path) -> None:
    from tiny_estimators import Majority

    data = cancer()
    estimator = Majority().fit(data.train_inputs, data.train_labels)
    with pytest.raises(ConversionError) as info:
        BACKENDS.get("onnxruntime_cpu").build(request_for(tmp_path, estimator, data))
    message = str(info.value)
    assert message.startswith("m-none-b1: Majority does not convert to ONNX (skl2onnx ")
    assert len(message) < 600  # the converter's own message can hold a whole graph: its first line only
    assert 'leave them out with [models.NAME] backends = ["sklearn"]' in str(info.value)


def test_what_a_backend_cannot_run_is_skipped_naming_the_operators(tmp_path: Path) -> None:
    data = cancer()
    trees = request_for(tmp_path, tiny_xgboost(context(tmp_path, data)), data)
    with pytest.raises(pytest.skip.Exception) as info:
        BACKENDS.get("openvino_cpu").build(trees)
    assert str(info.value.msg) == (
        "m-none-b1: openvino_cpu cannot import the ai.onnx.ml operators TreeEnsembleClassifier of the "
        'converted estimator; leave it out with [models.m] exclude = ["openvino_cpu"]'
    )
    quantized = request_for(tmp_path, tiny_xgboost(context(tmp_path, data)), data, "int8_dynamic")
    with pytest.raises(pytest.skip.Exception) as info:
        BACKENDS.get("onnxruntime_cpu").build(quantized)
    assert (
        "has no MatMul, Gemm or Conv whose weights INT8 could quantize (its graph: TreeEnsembleClassifier)"
        in str(info.value.msg)
    )
    # A scaled MLP converts to standard ONNX: OpenVINO runs it, and INT8 quantizes its MatMuls.
    regression = diabetes()
    mlp = tiny_regressor(context(tmp_path, regression))
    outputs, _ = outputs_on("openvino_cpu", request_for(tmp_path, mlp, regression))
    np.testing.assert_allclose(outputs, predict_outputs(mlp, regression.eval_inputs), rtol=1e-4, atol=1e-3)
    int8 = BACKENDS.get("onnxruntime_cpu")
    assert (
        int8.inspect(int8.build(request_for(tmp_path, mlp, regression, "int8_dynamic")))["quantized_ops"] == 2
    )


def test_a_fitted_estimator_is_cached(tmp_path: Path) -> None:
    lines: list[str] = []
    data = cancer()
    first = tiny_xgboost(context(tmp_path, data, lines))
    second = tiny_xgboost(context(tmp_path, data, lines))
    assert lines == ["m: fitting XGBClassifier (cached for later runs)"]
    assert first is not second
    np.testing.assert_array_equal(
        first.predict_proba(data.eval_inputs), second.predict_proba(data.eval_inputs)
    )
    assert MODEL_KINDS[CLASSICAL].fingerprint(first) == MODEL_KINDS[CLASSICAL].fingerprint(second)


# ---- a whole run ------------------------------------------------------------------------------


TEST_FILE = """
def test_case(perf_case, benchmark):
    perf_case.build()
    perf_case.check_accuracy()
    perf_case.time(benchmark)
    perf_case.check_regression()
"""


@pytest.fixture
def classical_project(
    pytester: pytest.Pytester, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    text = CLASSICAL_MATRIX.replace("[models.tiny_mlp]\n", '[models.tiny_mlp]\nexclude = ["int8_static"]\n')
    return write_project(pytester, shared_cache, monkeypatch, text)


def test_a_run_of_classical_models_judges_them_against_their_estimator(
    classical_project: pytest.Pytester,
) -> None:
    result = classical_project.runpytest("perf", "-m", "classical", "-rs", "--perf-report", "out")
    result.assert_outcomes(passed=12, skipped=3)
    result.stdout.fnmatch_lines([
        "*tiny_xgb-fp32-openvino_cpu-b1: openvino_cpu cannot import the ai.onnx.ml operators TreeEnsembleClassifier*",
        "*tiny_xgb-int8_dynamic-onnxruntime_cpu-b1: the converted estimator has no MatMul*",
    ])  # fmt: skip
    report = (classical_project.path / "out" / "report.md").read_text()
    assert "## tiny_reg\n" in report and "metric: `mae` (lower is better)" in report
    rows = [line for line in report.splitlines() if line.startswith("| `tiny_")]
    assert len(rows) == 12
    for line in rows:
        if "-sklearn-" in line:
            assert "| 1.00x |" in line, line  # the speedup is over the estimator itself
        else:
            assert "| 1.00x |" not in line and "| - |" not in line.split("|")[8], line
    assert "speedup is over fp32 on torch_cpu (sklearn for classical models; onnxruntime_cpu for onnx models)" in report


def test_a_classical_variant_that_drifts_from_its_estimator_fails_its_gate(
    classical_project: pytest.Pytester,
) -> None:
    matrix = classical_project.path / "perf" / "matrix.toml"
    matrix.write_text(
        matrix.read_text()
        + '\n[[overrides]]\nmatch = "tiny_reg-int8_dynamic-*"\naccuracy = { max_abs_diff = 1e-9 }\nreason = "a test"\n'
    )
    result = classical_project.runpytest("perf", "-k", "tiny_reg and int8_dynamic and b1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "tiny_reg-int8_dynamic-onnxruntime_cpu-b1: accuracy gate failed",
        "  fidelity: fidelity to the FP32 reference: max abs diff * (needs <= 1e-09)",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("factory", "kind", "message"),
    [
        (
            "tiny_models:tiny_mlp",
            "classical",
            "returned TinyMLP, not a fitted estimator with scikit-learn's API (scikit-learn, XGBoost, LightGBM) "
            "(kind = 'classical'); if it is meant to be one, set kind = \"torch\" in [models.tiny_xgb]",
        ),
        (
            "tiny_estimators:tiny_xgboost",
            "torch",
            'if it is meant to be one, set kind = "classical" in [models.tiny_xgb]',
        ),
        ("tiny_estimators:not_an_estimator", "classical", "returned dict, not a fitted estimator"),
        (
            "tiny_estimators:unpicklable",
            "classical",
            "tiny_estimators:unpicklable: the fitted Pipeline cannot be pickled (",
        ),
    ],
)
def test_a_factory_of_the_wrong_kind_is_named(
    classical_project: pytest.Pytester, factory: str, kind: str, message: str
) -> None:
    matrix = classical_project.path / "perf" / "matrix.toml"
    data = "tiny_models:blobs" if factory.startswith("tiny_models") else "tiny_estimators:cancer"
    text = matrix.read_text().replace(
        'kind = "classical"\nfactory = "tiny_estimators:tiny_xgboost"\ndata = "tiny_estimators:cancer"',
        f'kind = "{kind}"\nfactory = "{factory}"\ndata = "{data}"',
    )
    assert f'factory = "{factory}"' in text
    matrix.write_text(text)
    result = classical_project.runpytest("perf", "-k", "tiny_xgb and fp32 and onnxruntime and b1")
    result.assert_outcomes(failed=1)
    assert message in result.stdout.str()


def test_without_the_converters_the_onnx_cases_are_skipped_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perfgate.backends import estimator_onnx

    data = cancer()
    request = request_for(tmp_path, tiny_logreg(context(tmp_path, data)), data)
    monkeypatch.setattr(estimator_onnx, "module_installed", lambda module: module != "onnxmltools")
    with pytest.raises(pytest.skip.Exception) as info:
        BACKENDS.get("onnxruntime_cpu").build(request)
    assert str(info.value.msg) == (
        "m-none-b1: onnxmltools is not installed (pip install 'perfgate[classical]'): "
        "a classical model reaches the ONNX backends through its conversion"
    )


@pytest.mark.parametrize(
    ("rows", "operators", "cause"),
    [
        (3, ["TreeEnsembleClassifier"], "TreeEnsembleClassifier holds its split thresholds in float32"),
        (135, ["TreeEnsembleClassifier"], "a converter that does not support a parameter of the estimator"),
        (3, ["LinearClassifier"], "a converter that does not support a parameter of the estimator"),
    ],
)
def test_a_mismatch_names_its_likely_cause(rows: int, operators: list[str], cause: str) -> None:
    """A few rows of a tree ensemble: float32 thresholds, and the fix; anything else: the converter."""
    from perfgate.backends.estimator_onnx import _mismatch

    report = {"rows_beyond": rows, "samples": 360, "max_abs_diff": 0.03, "atol": 1e-5, "rtol": 1e-5}
    report |= {"output_scale": 1.0, "tolerance": 2e-5}
    request = BuildRequest("forest-fp32-onnxruntime_cpu-b1", None, "k", "none", {}, cancer(), 1, None)  # type: ignore[arg-type]
    message = _mismatch(request, report, operators)
    assert message.startswith(
        f"forest-fp32-onnxruntime_cpu-b1: the ONNX conversion differs from the estimator by max abs 0.03 on "
        f"{rows} of 360 eval rows (tolerance 1e-05 + 1e-05 x output scale 1 = 2e-05)"
    )
    assert cause in message
    if "float32" in cause:
        assert "raise [models.forest] export_tolerance atol above 0.03" in message


def test_a_model_whose_library_is_not_installed_is_skipped_naming_it(
    classical_project: pytest.Pytester,
) -> None:
    """Like a missing backend: the model's cases are skipped with the install line, not failed."""
    matrix = classical_project.path / "perf" / "matrix.toml"
    text = matrix.read_text().replace(
        'factory = "tiny_estimators:tiny_xgboost"', 'factory = "tiny_estimators:needs_an_absent_library"'
    )
    matrix.write_text(text)
    result = classical_project.runpytest("perf", "-k", "tiny_xgb and fp32 and b1", "-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines([
        "*model 'tiny_xgb' in *matrix.toml: its factory tiny_estimators:needs_an_absent_library needs "
        "perfgate_test_library_that_is_not_installed, which is not installed (install it)*"
    ])  # fmt: skip
