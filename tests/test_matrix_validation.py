"""The whole matrix is validated at load time: each fault is a MatrixError naming file, key and fix.

Every test writes a small matrix to ``tmp_path`` and loads it; no case runs, except the two
end-to-end tests at the end (a technique that does not apply is skipped; a broken metric says so).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perfgate.matrix as matrix_module
from perfgate.accuracy import MetricError, checked_metric, resolve_metric
from perfgate.calibration import Calibration
from perfgate.gates import AccuracyPolicy, RegressionPolicy
from perfgate.matrix import ALL_PROFILES, MatrixError, load_matrix
from perfgate.registry import Registry
from perfgate.techniques import TECHNIQUES, NotApplicable
from perfgate.techniques.pruning import NoPrunableChain
from perfgate.techniques.quantization import StaticInt8
from perfgate.timing import TimingPolicy
from perfgate.validation import SettingError, Settings

TESTS = Path(__file__).parent
REPO = TESTS.parent

BASE = """
pythonpath = ["{tests}", "{repo}"]
batch_sizes = [1, 8]
[timing]
min_rounds = 30
[models.m]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"
[techniques.fp32]
[techniques.int8_static]
[backends.torch_cpu]
[backends.onnxruntime_cpu]
"""


def matrix_text(*edits: tuple[str, str], append: str = "") -> str:
    text = BASE.format(tests=TESTS.as_posix(), repo=REPO.as_posix())
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + append


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str, *fragments: str, profile: str | None = None) -> str:
    """Load ``text``; it must fail with a message naming the file and holding each fragment, verbatim."""
    path = write(tmp_path, text)
    with pytest.raises(MatrixError) as info:
        load_matrix(path, profile)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message
    return message


def test_the_base_matrix_loads(tmp_path: Path) -> None:
    matrix = load_matrix(write(tmp_path, matrix_text()))
    assert len(matrix.cases) == 8


# ---- batch sizes ------------------------------------------------------------------------------

BATCH_PLACES = {
    "batch_sizes": lambda value: matrix_text(("batch_sizes = [1, 8]", f"batch_sizes = {value}")),
    "[models.m] batch_sizes": lambda value: matrix_text(
        ('metric = "top1"', f'metric = "top1"\nbatch_sizes = {value}')
    ),
    "[techniques.int8_static] batch_sizes": lambda value: matrix_text(
        ("[techniques.int8_static]", f"[techniques.int8_static]\nbatch_sizes = {value}")
    ),
    "[profiles.p] batch_sizes": lambda value: matrix_text(append=f"[profiles.p]\nbatch_sizes = {value}\n"),
}


@pytest.mark.parametrize("place", sorted(BATCH_PLACES))
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[0]", "0 is not >= 1"),
        ("[-4]", "-4 is not >= 1"),
        ("[1.5]", "1.5 is not an integer"),
        ("[true]", "true is not an integer"),
        ("[]", "the list is empty"),
        ('"8"', "not a list"),
        ("[1, 1]", "1 is listed twice"),
    ],
)
def test_a_bad_batch_size_is_refused_wherever_it_is(
    tmp_path: Path, place: str, value: str, problem: str
) -> None:
    """Today: "need at least one array to concatenate" at run time, or a silent fallback."""
    refused(
        tmp_path,
        BATCH_PLACES[place](value),
        f"{place} = ",
        problem,
        "batch_sizes must be a list of integers >= 1",
        profile="p" if place.startswith("[profiles") else None,
    )


# ---- timing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("min_rounds = nan", "[timing] min_rounds = nan: must be an integer >= 1"),
        ("min_rounds = 0", "[timing] min_rounds = 0: must be an integer >= 1"),
        ("min_rounds = 20.0", "[timing] min_rounds = 20.0: must be an integer >= 1"),
        ("min_rounds = true", "[timing] min_rounds = true: must be an integer >= 1"),
        ("max_rounds = 0", "[timing] max_rounds = 0: must be an integer >= 1"),
        ("warmup_rounds = -1", "[timing] warmup_rounds = -1: must be an integer >= 0"),
        ("warmup_time_s = -0.5", "[timing] warmup_time_s = -0.5: must be a finite number >= 0"),
        ("min_time_s = inf", "[timing] min_time_s = inf: must be a finite number >= 0"),
        ("min_time_s = nan", "[timing] min_time_s = nan: must be a finite number >= 0"),
        ('min_time_s = "1s"', '[timing] min_time_s = "1s": must be a finite number >= 0'),
        ("max_time_s = 0", "[timing] max_time_s = 0: must be a finite number > 0"),
        ("case_timeout_s = 0", "[timing] case_timeout_s = 0: must be a finite number > 0"),
        ("case_timeout_s = -inf", "[timing] case_timeout_s = -inf: must be a finite number > 0"),
        (
            "min_round = 5",
            "[timing] min_round = 5: unknown timing setting; valid: case_timeout_s, max_rounds",
        ),
        (
            "max_rounds = 10",
            "case m-fp32-torch_cpu-b1: timing max_rounds = 10 (from [timing]) is below min_rounds = 30 "
            "(from [timing]): max_rounds must be >= min_rounds",
        ),
        (
            "max_time_s = 0.5",
            "timing max_time_s = 0.5 (from [timing]) is below min_time_s = 1.0 (from perfgate's default)",
        ),
    ],
)
def test_a_bad_timing_setting_names_its_key_and_range(tmp_path: Path, setting: str, message: str) -> None:
    """Today: "cannot convert float NaN to integer" (or a hang, or nothing timed) at run time."""
    kept = "" if setting.startswith("min_rounds") else "min_rounds = 30\n"
    refused(tmp_path, matrix_text(("min_rounds = 30", kept + setting)), message)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('metric = "top1"', 'metric = "top1"\ntiming = { case_timeout_s = -5 }'),
            "[models.m] timing.case_timeout_s = -5: must be a finite number > 0",
        ),
        (
            ("[techniques.fp32]", "[techniques.fp32]\ntiming = { min_rounds = 0 }"),
            "[techniques.fp32] timing.min_rounds = 0: must be an integer >= 1",
        ),
        (
            (
                "[backends.onnxruntime_cpu]",
                '[backends.onnxruntime_cpu]\n[[overrides]]\nmatch = "m-*"\ntiming = { warmup_time_s = nan }',
            ),
            "[[overrides]] #1 timing.warmup_time_s = nan: must be a finite number >= 0",
        ),
    ],
)
def test_timing_in_a_model_technique_or_override_is_checked_too(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    refused(tmp_path, matrix_text(edit), message)


def test_case_timeout_is_set_per_model_technique_and_case(tmp_path: Path) -> None:
    """[timing] < [techniques.X] timing < [models.X] timing < [[overrides]], as for every threshold."""
    text = matrix_text(
        ("min_rounds = 30", "min_rounds = 30\ncase_timeout_s = 100.0"),
        (
            "[techniques.int8_static]",
            "[techniques.int8_static]\ntiming = { case_timeout_s = 50.0, min_rounds = 40 }",
        ),
        append='[models.big]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\n'
        "timing = { case_timeout_s = 900.0 }\n"
        '[[overrides]]\nmatch = "big-int8_static-onnxruntime_cpu-b8"\ntiming = { case_timeout_s = 5.0 }\n',
    )
    cases = {c.id: c.timing for c in load_matrix(write(tmp_path, text)).cases}
    assert cases["m-fp32-torch_cpu-b1"].case_timeout_s == 100.0
    assert (
        cases["m-int8_static-torch_cpu-b1"].case_timeout_s,
        cases["m-int8_static-torch_cpu-b1"].min_rounds,
    ) == (50.0, 40)
    assert cases["big-int8_static-torch_cpu-b1"].case_timeout_s == 900.0  # the model beats the technique
    assert cases["big-int8_static-onnxruntime_cpu-b8"].case_timeout_s == 5.0
    assert TimingPolicy().case_timeout_s == 600.0


FLOAT_TIMING = ["warmup_time_s", "min_time_s", "max_time_s", "case_timeout_s"]
INT_TIMING = {"warmup_rounds": 0, "min_rounds": 1, "max_rounds": 1}


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(FLOAT_TIMING), value=st.floats(min_value=1e-9, max_value=1e9))
def test_any_finite_positive_timing_value_is_accepted(key: str, value: float) -> None:
    assert getattr(TimingPolicy().merged({key: value}), key) == value


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(FLOAT_TIMING),
    value=st.one_of(
        st.floats(max_value=-1e-12), st.just(math.nan), st.just(math.inf), st.booleans(), st.text()
    ),
)
def test_any_negative_nan_inf_or_non_number_timing_value_is_refused(key: str, value: Any) -> None:
    with pytest.raises(SettingError, match=rf"^{key} = .*: must be a finite number >"):
        TimingPolicy().merged({key: value})


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(sorted(INT_TIMING)), offset=st.integers(min_value=-1000, max_value=1000))
def test_integer_timing_settings_accept_exactly_the_integers_in_range(key: str, offset: int) -> None:
    value = INT_TIMING[key] + offset
    if offset >= 0:
        assert getattr(TimingPolicy().merged({key: value}), key) == value
    else:
        with pytest.raises(SettingError, match=rf"{key} = {value}: must be an integer >= {INT_TIMING[key]}"):
            TimingPolicy().merged({key: value})
    with pytest.raises(SettingError):
        TimingPolicy().merged({key: float(value)})


# ---- regression and accuracy policies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('threshold = "10%"', '[regression] threshold = "10%": must be a finite number >= 0'),
        ("threshold = -0.1", "[regression] threshold = -0.1: must be a finite number >= 0"),
        ("threshold = nan", "[regression] threshold = nan: must be a finite number >= 0"),
        ("alpha = 0.01", "[regression] alpha = 0.01: no longer a setting: the gate judges sessions"),
        ("resamples = 1000", "[regression] resamples = 1000: no longer a setting"),
        ('normalize = "yes"', '[regression] normalize = "yes": must be true or false'),
        ("confirm = -1", "[regression] confirm = -1: must be an integer >= 0"),
        ("confirm = 1.5", "[regression] confirm = 1.5: must be an integer >= 0"),
        ("confirm = true", "[regression] confirm = true: must be an integer >= 0"),
        (
            "treshold = 0.1",
            "[regression] treshold = 0.1: unknown regression setting; valid: confirm, normalize, threshold",
        ),
    ],
)
def test_a_bad_regression_setting_names_its_key_and_range(tmp_path: Path, setting: str, message: str) -> None:
    """Today: a percentile error from numpy, a TypeError, or a threshold that passes every case."""
    refused(tmp_path, matrix_text(append=f"[regression]\n{setting}\n"), message)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("min_relative_metric = 0", "min_relative_metric = 0: must be a number in (0, 1]"),
        ("min_relative_metric = 1.5", "min_relative_metric = 1.5: must be a number in (0, 1]"),
        ('min_relative_metric = "99%"', 'min_relative_metric = "99%": must be a number in (0, 1]'),
        ("max_metric_delta = -1", "max_metric_delta = -1: must be a finite number >= 0"),
        ("max_metric_delta = inf", "max_metric_delta = inf: must be a finite number >= 0"),
        ("max_baseline_drop = -0.01", "max_baseline_drop = -0.01: must be a finite number >= 0"),
        ("min_top1_agreement = 1.1", "min_top1_agreement = 1.1: must be a number in [0, 1]"),
        ("min_sqnr_db = nan", "min_sqnr_db = nan: must be a finite number"),
        ("min_cosine = 2", "min_cosine = 2: must be a number in [-1, 1]"),
        ("max_abs_diff = -1e-4", "max_abs_diff = -0.0001: must be a finite number >= 0"),
        ("max_diff_rtol = nan", "max_diff_rtol = nan: must be a finite number >= 0"),
        ('require_effect = "no"', 'require_effect = "no": must be true or false'),
        ("require_effect = 0", "require_effect = 0: must be true or false"),
    ],
)
@pytest.mark.parametrize("table", ["[accuracy]", "[models.m] accuracy"])
def test_a_bad_accuracy_setting_names_its_key_and_range(
    tmp_path: Path, table: str, setting: str, message: str
) -> None:
    if table == "[accuracy]":
        text, prefix = matrix_text(append=f"[accuracy]\n{setting}\n"), "[accuracy] "
    else:
        text = matrix_text(('metric = "top1"', f'metric = "top1"\naccuracy = {{ {setting} }}'))
        prefix = "[models.m] accuracy."
    refused(tmp_path, text, prefix + message)


def test_the_policies_check_their_own_keys_outside_a_matrix() -> None:
    """The rules live in the policies' ``merged``: a technique's defaults are held to them as well."""
    with pytest.raises(SettingError, match=r"^min_cosine = 3: must be a number in \[-1, 1\]"):
        AccuracyPolicy().merged({"min_cosine": 3})
    assert AccuracyPolicy().merged({"min_sqnr_db": None}).min_sqnr_db is None  # None switches a check off
    with pytest.raises(SettingError, match=r"^confirm = -1: must be an integer >= 0"):
        RegressionPolicy().merged({"confirm": -1})
    assert RegressionPolicy().merged({"threshold": 0}).threshold == 0


def test_the_policies_share_one_merged() -> None:
    """Accuracy, regression and timing settings merge through ``Settings.merged``; the regression
    policy only adds its refusal of the removed settings in front of it."""
    assert AccuracyPolicy.merged is TimingPolicy.merged is Settings.merged
    with pytest.raises(SettingError, match=r"^min_round = 3: unknown timing setting; valid: case_timeout_s"):
        TimingPolicy().merged({"min_round": 3})
    with pytest.raises(SettingError, match=r"^alpha = 0\.05: no longer a setting"):
        RegressionPolicy().merged({"alpha": 0.05})


# ---- model keys, threads, markers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('metric = "top1"', 'metric = "top1"\nexport_tolerance = { atol = nan }'),
            "[models.m] export_tolerance = { atol = nan }: needs atol and rtol finite numbers >= 0",
        ),
        (
            ('metric = "top1"', 'metric = "top1"\nexport_tolerance = { rtol = true }'),
            "[models.m] export_tolerance = { rtol = true }: needs atol and rtol finite numbers >= 0",
        ),
        (
            ('metric = "top1"', 'metric = "top1"\ncalibrate_on_eval = "yes"'),
            '[models.m] calibrate_on_eval = "yes": must be true or false',
        ),
        (
            ('metric = "top1"', 'metric = "top1"\nmetric_direction = "up"'),
            "metric_direction = 'up'; use \"higher\"",
        ),
        (
            ('metric = "top1"', 'metric = "top1"\nmarkers = "slow"'),
            '[models.m] markers = "slow": must be a list of marker names',
        ),
        (
            ('metric = "top1"', 'metric = "top1"\nmarkers = ["very slow"]'),
            '"very slow" is not a marker name',
        ),
        (
            ("[techniques.fp32]", '[techniques.fp32]\nmarkers = ["_private"]'),
            '[techniques.fp32] markers = ["_private"]: "_private" is not a marker name',
        ),
        (
            ("[backends.torch_cpu]", "[backends.torch_cpu]\nmarkers = 3"),
            "[backends.torch_cpu] markers = 3: must be a list of marker names",
        ),
        (
            ("[backends.torch_cpu]", "[backends.torch_cpu]\nthreads = { intra_op = 0 }"),
            "[backends.torch_cpu.threads] intra_op = 0: must be an integer >= 1",
        ),
        (
            ("[timing]", "[threads]\ninter_op = 1.5\n[timing]"),
            "[threads] inter_op = 1.5: must be an integer >= 1",
        ),
        (("[timing]", "[threads]\nintra = 2\n[timing]"), "[threads] has unknown key(s) ['intra']"),
        (
            ('metric = "top1"', 'metric = "top1"\noptions = 3'),
            "[models.m] options = 3: must be a table",
        ),
        (
            ('metric = "top1"', 'metric = "top1"\ndescription = 3'),
            "[models.m] description = 3: must be a string",
        ),
        (
            ('pythonpath = ["', 'pythonpath = ["nowhere", "'),
            'pythonpath entry "nowhere" is ',
        ),
    ],
)
def test_model_threads_and_marker_settings_are_checked(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    refused(tmp_path, matrix_text(edit), message)


# ---- technique options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("technique", "options", "message"),
    [
        (
            "int8_static",
            '{ calibraton = { method = "minmax" } }',
            '[techniques.int8_static] options.calibraton = { method = "minmax" }: unknown option of int8_static; '
            "valid: calibration, copies_timed, trt_max_batch, trt_min_batch",
        ),
        (
            "int8_static",
            '{ calibration = { method = "kl" } }',
            '[techniques.int8_static] options.calibration.method = "kl": must be one of minmax, entropy, percentile',
        ),
        (
            "int8_static",
            "{ calibration = { size = 0 } }",
            "[techniques.int8_static] options.calibration.size = 0: must be an integer >= 1",
        ),
        (
            "int8_static",
            '{ calibration = { size = "256" } }',
            '[techniques.int8_static] options.calibration.size = "256": must be an integer >= 1',
        ),
        (
            "int8_static_percentile",
            "{ calibration = { percentile = 101.0 } }",
            "options.calibration.percentile = 101.0: must be a number in (50, 100]",
        ),
        (
            "int8_static",
            "{ calibration = { samples = 10 } }",
            "options.calibration.samples = 10: unknown calibration key; valid: batch_size, method, percentile, size",
        ),
        (
            "prune_unstructured",
            "{ amout = 0.5 }",
            "[techniques.prune_unstructured] options.amout = 0.5: unknown option of prune_unstructured; "
            "valid: amount, copies_timed, epochs, lr, scope, trt_max_batch, trt_min_batch",
        ),
        ("prune_unstructured", "{ amount = 1.0 }", "options.amount = 1.0: must be a number in (0, 1)"),
        ("prune_structured", "{ amount = 0 }", "options.amount = 0: must be a number in (0, 1)"),
        ("prune_unstructured", '{ scope = "all" }', 'options.scope = "all": must be one of global, layer'),
        ("prune_structured", "{ epochs = 0 }", "options.epochs = 0: must be an integer >= 1"),
        ("prune_structured", "{ lr = 0 }", "options.lr = 0: must be a finite number > 0"),
        (
            "prune_structured",
            '{ scope = "layer" }',
            'options.scope = "layer": unknown option of prune_structured',
        ),
        (
            "prune_structured_int8",
            '{ calibration = { method = "max" } }',
            'options.calibration.method = "max": must be one of minmax, entropy, percentile',
        ),
        (
            "distill",
            '{ student = "fixtures.zoo:half_width_student", temperature = 0 }',
            "options.temperature = 0: must be a finite number > 0",
        ),
        (
            "distill",
            '{ student = "fixtures.zoo:half_width_student", alpha = 1.5 }',
            "options.alpha = 1.5: must be a number in [0, 1]",
        ),
        (
            "distill",
            "{ temperature = 4.0 }",
            '[techniques.distill] options.student is not set: distill needs it: set it to a "package.module:function" string',
        ),
        (
            "distill",
            '{ student = "fixtures.zoo:half_width_studnt" }',
            "[techniques.distill] options.student = \"fixtures.zoo:half_width_studnt\": module 'fixtures.zoo' "
            "(",
        ),
        (
            "qat",
            "{ frozen_epochs = -1 }",
            "[techniques.qat] options.frozen_epochs = -1: must be an integer >= 0",
        ),
        ("qat", "{ epochs = 2.5 }", "[techniques.qat] options.epochs = 2.5: must be an integer >= 1"),
        (
            "fp32",
            "{ amount = 0.5 }",
            "[techniques.fp32] options.amount = 0.5: unknown option of fp32; valid: copies_timed, trt_max_batch, trt_min_batch",
        ),
        (
            "fp32",
            '{ copies_timed = "yes" }',
            '[techniques.fp32] options.copies_timed = "yes": must be true or false',
        ),
        (
            "fp32",
            "{ trt_min_batch = 0 }",
            "[techniques.fp32] options.trt_min_batch = 0: must be an integer >= 1",
        ),
        (
            "int8_dynamic",
            "{ calibration = { size = 64 } }",
            "options.calibration = { size = 64 }: unknown option of int8_dynamic",
        ),
        ("fp32", "3", "[techniques.fp32] options = 3: must be a table"),
    ],
)
def test_technique_options_are_declared_and_checked(
    tmp_path: Path, technique: str, options: str, message: str
) -> None:
    """Today a misspelled option is silently ignored, and a bad value fails every case at run time."""
    table = "[techniques.fp32]" if technique == "fp32" else "[techniques.int8_static]"
    text = matrix_text((table, f"[techniques.{technique}]\noptions = {options}"))
    refused(tmp_path, text, message)


def test_every_registered_technique_declares_the_options_of_its_defaults() -> None:
    """The defaults a technique ships with pass its own option rules."""
    for name in TECHNIQUES.names():
        technique = TECHNIQUES.get(name)
        defaults = {k: v for k, v in technique.default_options.items() if v is not None}
        technique.check_options(defaults)


def test_a_calibration_table_merges_into_the_techniques_default(tmp_path: Path) -> None:
    """``calibration = { size = 64 }`` on int8_static_entropy keeps its entropy method (it fell to minmax)."""
    text = matrix_text(
        (
            "[techniques.int8_static]",
            "[techniques.int8_static_entropy]\noptions = { calibration = { size = 64 } }",
        )
    )
    cases = [c for c in load_matrix(write(tmp_path, text)).cases if c.technique == "int8_static_entropy"]
    assert cases and all(
        c.technique_options["calibration"] == {"method": "entropy", "size": 64} for c in cases
    )


def test_the_calibration_is_parsed_once_at_load_and_carried_by_each_case(tmp_path: Path) -> None:
    """A case of a calibrating technique carries its parsed Calibration; any other case none."""
    text = matrix_text(
        ("[techniques.int8_static]", "[techniques.int8_static]\noptions = { calibration = { size = 64 } }")
    )
    cases = load_matrix(write(tmp_path, text)).cases
    assert {c.calibration for c in cases if c.technique == "int8_static"} == {Calibration(size=64)}
    assert {c.calibration for c in cases if c.technique == "fp32"} == {None}


def test_a_techniques_own_calibration_typo_is_a_matrix_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A technique registered with a misspelled calibration default fails the load, naming it (it
    failed each of its cases at build time, in each backend that re-read the options)."""
    registry: Registry[Any] = Registry("technique")
    registry.register("fp32", TECHNIQUES.get("fp32"))
    typo = StaticInt8(name="int8_typo", description="", default_options={"calibration": {"methd": "minmax"}})
    registry.register("int8_typo", typo)
    monkeypatch.setattr(matrix_module, "TECHNIQUES", registry)
    text = matrix_text(("[techniques.int8_static]", "[techniques.int8_typo]"))
    refused(
        tmp_path, text, '[techniques.int8_typo] options.calibration.methd = "minmax": unknown calibration key'
    )


# ---- module paths ------------------------------------------------------------------------------


def test_a_factory_that_does_not_import_is_refused_with_the_import_error(tmp_path: Path) -> None:
    """Today: --collect-only passes, and every case of the model fails at run time."""
    message = refused(
        tmp_path,
        matrix_text(('factory = "tiny_models:tiny_mlp"', 'factory = "tiny_modls:tiny_mlp"')),
        '[models.m] factory = "tiny_modls:tiny_mlp": importing it fails with ModuleNotFoundError: '
        "No module named 'tiny_modls'",
        "put the folder that holds it on the matrix's pythonpath",
    )
    assert str(TESTS.as_posix()) in message  # the pythonpath it has now


def test_a_missing_attribute_is_refused_with_the_close_names(tmp_path: Path) -> None:
    refused(
        tmp_path,
        matrix_text(('data = "tiny_models:blobs"', 'data = "tiny_models:blob"')),
        "[models.m] data = \"tiny_models:blob\": module 'tiny_models' (",
        "has no attribute 'blob'; did you mean blobs",
    )


def test_a_module_that_fails_at_import_shows_its_own_last_line(tmp_path: Path) -> None:
    (tmp_path / "broken_zoo_for_matrix.py").write_text("raise RuntimeError('the zoo needs a GPU')\n")
    (tmp_path / "values_for_matrix.py").write_text("not_a_function = 3\n")
    text = matrix_text(
        ('pythonpath = ["', 'pythonpath = [".", "'),
        ('factory = "tiny_models:tiny_mlp"', 'factory = "broken_zoo_for_matrix:build"'),
    )
    refused(
        tmp_path,
        text,
        '[models.m] factory = "broken_zoo_for_matrix:build": importing it fails with RuntimeError: the zoo needs a GPU',
        "module 'broken_zoo_for_matrix' itself fails to import: fix it",
    )
    text = matrix_text(
        ('pythonpath = ["', 'pythonpath = [".", "'),
        ('data = "tiny_models:blobs"', 'data = "values_for_matrix:not_a_function"'),
    )
    refused(
        tmp_path,
        text,
        '[models.m] data = "values_for_matrix:not_a_function": values_for_matrix:not_a_function is a int, not a function',
    )


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (
            '"top5"',
            '[models.m] metric = "top5": not a registered metric (top1, mae, mse, r2) nor a "package.module:function" path',
        ),
        ('"tiny_models:msee"', "[models.m] metric = \"tiny_models:msee\": module 'tiny_models' ("),
        ("3", "[models.m] metric = 3: not a registered metric"),
    ],
)
def test_a_metric_is_registered_or_imports(tmp_path: Path, metric: str, message: str) -> None:
    refused(tmp_path, matrix_text(('metric = "top1"', f"metric = {metric}")), message)


# ---- a matrix that generates nothing -----------------------------------------------------------


def test_no_technique_no_backend_or_nothing_possible_is_an_error(tmp_path: Path) -> None:
    """Today each of these exits 0, having run nothing."""
    refused(
        tmp_path,
        matrix_text(("[techniques.fp32]\n[techniques.int8_static]\n", "")),
        "no [techniques.NAME] table: the matrix has nothing to run; add one, e.g. [techniques.fp32] (registered: fp32,",
    )
    refused(
        tmp_path,
        matrix_text(("[backends.torch_cpu]\n[backends.onnxruntime_cpu]\n", "")),
        "no [backends.NAME] table: the matrix has nowhere to run; add one, e.g. [backends.torch_cpu]",
    )
    refused(
        tmp_path,
        matrix_text(
            ("[techniques.fp32]\n[techniques.int8_static]\n", "[techniques.bf16]\n"),
            ("[backends.torch_cpu]\n", ""),
        ),
        "the matrix generates no case: every model x technique x backend combination is excluded "
        "(m-bf16-onnxruntime_cpu: onnxruntime_cpu has no 'bf16' lowering for bf16)",
    )


def test_a_profile_that_filters_everything_out_is_an_error(tmp_path: Path) -> None:
    text = matrix_text(
        append='[profiles.big]\nbatch_sizes = [64]\n[profiles.onnx_bf16]\ntechniques = ["fp32"]\nbackends = ["onnxruntime_cpu"]\nbatch_sizes = [2]\n'
    )
    refused(
        tmp_path,
        text,
        "[profiles.big] selects no case of the 8 the matrix generates: batch_sizes [64] matches no batch size",
        "widen its models, techniques, backends or batch_sizes",
        profile="big",
    )
    assert len(load_matrix(write(tmp_path, text), ALL_PROFILES).cases) == 8  # the profile alone is at fault
    refused(
        tmp_path,
        matrix_text(append='[profiles.p]\nmodels = ["resnet"]\n'),
        '[profiles.p] models lists "resnet", which is not a [models.NAME] of this file; declared: m',
    )
    # Every profile is checked, not only the one selected.
    refused(
        tmp_path,
        matrix_text(append="[profiles.other]\nbackends = []\n"),
        "[profiles.other] backends = []: must be a non-empty list",
    )


def test_an_override_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    refused(
        tmp_path,
        matrix_text(append='[[overrides]]\nmatch = "m-fp32-onnx-*"\nregression = { threshold = 0.05 }\n'),
        '[[overrides]] #1 (match = "m-fp32-onnx-*") matches no case of the matrix, so it changes nothing; '
        "case ids are <model>-<technique>-<backend>-b<batch>, e.g. m-fp32-torch_cpu-b1",
    )
    refused(
        tmp_path,
        matrix_text(append="[[overrides]]\nregression = { threshold = 0.05 }\n"),
        '[[overrides]] #1 needs match = "<glob on case ids>"',
    )
    refused(tmp_path, matrix_text(append='[overrides]\nmatch = "*"\n'), "write [[overrides]] (two brackets)")


# ---- per-model exclusions ----------------------------------------------------------------------


def test_a_model_runs_only_on_its_backends(tmp_path: Path) -> None:
    text = matrix_text(
        (
            'metric = "top1"',
            'metric = "top1"\nbackends = ["torch_cpu"]\nexclude_reason = "torch.fft.rfft does not export to ONNX"',
        ),
        append='[models.other]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\n',
    )
    matrix = load_matrix(write(tmp_path, text))
    assert {c.backend for c in matrix.cases if c.model.name == "m"} == {"torch_cpu"}
    assert {c.backend for c in matrix.cases if c.model.name == "other"} == {"torch_cpu", "onnxruntime_cpu"}
    reasons = {e.combination: e.reason for e in matrix.excluded}
    assert reasons["m-fp32-onnxruntime_cpu"] == (
        "model m runs only on torch_cpu ([models.m] backends): torch.fft.rfft does not export to ONNX"
    )
    assert "m-int8_static-onnxruntime_cpu" in reasons and not any(k.startswith("other-") for k in reasons)


def test_a_model_excludes_backends_and_techniques_by_pattern(tmp_path: Path) -> None:
    text = matrix_text(
        ('metric = "top1"', 'metric = "top1"\nexclude = ["onnx*", "int8_static"]'),
        ("[backends.torch_cpu]", "[backends.torch_cpu]\n[backends.openvino_cpu]"),
    )
    matrix = load_matrix(write(tmp_path, text))
    assert sorted({(c.technique, c.backend) for c in matrix.cases}) == [
        ("fp32", "openvino_cpu"),
        ("fp32", "torch_cpu"),
    ]
    reasons = {e.combination: e.reason for e in matrix.excluded}
    assert reasons["m-fp32-onnxruntime_cpu"] == "model m excludes onnxruntime_cpu ([models.m] exclude)"
    assert reasons["m-int8_static-torch_cpu"] == "model m excludes int8_static ([models.m] exclude)"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            'exclude = ["onnxruntime_gpu"]',
            '[models.m] exclude = ["onnxruntime_gpu"]: "onnxruntime_gpu" names no registered backend or technique; valid: backends: torch_cpu, onnxruntime_cpu,',
        ),
        (
            'backends = ["int8_static"]',
            '"int8_static" names no registered backend; valid: backends: torch_cpu,',
        ),
        ("backends = []", "[models.m] backends = []: must be a non-empty list of backend names"),
        ('exclude = "onnxruntime_cpu"', '[models.m] exclude = "onnxruntime_cpu": must be a non-empty list'),
        (
            'exclude_reason = "no ONNX"',
            "[models.m] exclude_reason is set, but neither backends nor exclude excludes anything",
        ),
        (
            'backends = ["litert_cpu"]',
            "[models.m] backends exclude every case of model m: nothing of it would run (backends of this file: torch_cpu, onnxruntime_cpu)",
        ),
        ('exclude = ["*_cpu"]', "[models.m] exclude exclude every case of model m"),
    ],
)
def test_exclusion_lists_name_registered_backends_and_techniques(
    tmp_path: Path, setting: str, message: str
) -> None:
    text = matrix_text(
        ('metric = "top1"', f'metric = "top1"\n{setting}'),
        append='[models.other]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\n',
    )
    refused(tmp_path, text, message)


# ---- techniques that do not apply, broken metrics ----------------------------------------------


def test_structured_pruning_without_a_chain_is_not_applicable() -> None:
    """A model with no chain to narrow skips (NotApplicable); a ValueError still, for direct callers."""
    assert issubclass(NoPrunableChain, NotApplicable) and issubclass(NoPrunableChain, ValueError)


def test_a_metric_returning_an_array_raises_a_metric_error() -> None:
    """Today the array reaches the gates and crashes deep inside perfgate."""
    outputs, labels = np.zeros((5, 1), np.float32), np.ones(5, np.float32)
    metric = resolve_metric("tiny_models:per_sample_error")
    with pytest.raises(
        MetricError,
        match=re.escape(
            "metric tiny_models:per_sample_error returned ndarray of shape (5,), not a number: return a float"
        ),
    ):
        metric(outputs, labels)
    assert issubclass(MetricError, ValueError)
    for value in (np.float32(0.25), np.array(0.25), 0.25, np.int64(1)):
        score = checked_metric("m", lambda o, t, v=value: v)(outputs, labels)
        assert isinstance(score, float) and score == float(value)
    for value, text in [(None, "NoneType None"), ("0.9", "str '0.9'"), (True, "bool True")]:
        with pytest.raises(
            MetricError, match=re.escape(f"metric m returned {text}, not a number: return a float")
        ):
            checked_metric("m", lambda o, t, v=value: v)(outputs, labels)
    with pytest.raises(MetricError, match=r"metric m returned nan on finite outputs, not a finite number"):
        checked_metric("m", lambda o, t: float("nan"))(outputs, labels)
    # NaN outputs may give a NaN metric: the fidelity gate fails that variant, with its own message.
    assert math.isnan(checked_metric("m", lambda o, t: float("nan"))(np.full((5, 1), np.nan), labels))
    assert resolve_metric("top1")(np.eye(3), np.arange(3)) == 1.0


REGRESSOR_MATRIX = """
pythonpath = ["{tests}", "{repo}"]
batch_sizes = [1]
[timing]
warmup_rounds = 2
warmup_time_s = 0.0
min_rounds = 5
min_time_s = 0.0
[models.regressor]
factory = "tiny_models:diabetes_regressor"
data = "tiny_models:diabetes"
metric = "tiny_models:mse"
metric_direction = "lower"
[techniques.prune_unstructured]
[techniques.distill]
options = {{ student = "fixtures.zoo:half_width_student" }}
[backends.torch_cpu]
"""


def test_pruning_and_distillation_skip_a_regressor_with_the_reason(perf_project: pytest.Pytester) -> None:
    """Float labels cannot train with cross-entropy: the case skips, naming the model (it crashed)."""
    (perf_project.path / "perf" / "matrix.toml").write_text(
        REGRESSOR_MATRIX.format(tests=TESTS.as_posix(), repo=REPO.as_posix())
    )
    result = perf_project.runpytest("perf", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*regressor-prune_unstructured-torch_cpu-b1: prune_unstructured fine-tunes with cross-entropy "
            "on integer class labels, and model 'regressor' has float32 training labels of shape (322,) "
            "(a regression target?): it does not apply to this model",
            "SKIPPED*regressor-distill-torch_cpu-b1: distill fine-tunes with cross-entropy*it does not apply*",
        ]
    )


def test_a_matrix_error_is_a_usage_error_without_traceback(perf_project: pytest.Pytester) -> None:
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text().replace("min_rounds = 30", "min_rounds = nan"))
    result = perf_project.runpytest("perf", "--collect-only")
    # The plugin reports it as a usage error or as the test file's collection error: one line either way.
    assert result.ret in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERRUPTED)
    output = result.stdout.str() + result.stderr.str()
    assert "matrix.toml: [timing] min_rounds = nan: must be an integer >= 1" in output
    assert "Traceback" not in output and "matrix.py" not in output


def test_a_metric_returning_an_array_fails_its_case_with_the_fix(perf_project: pytest.Pytester) -> None:
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(
        matrix.read_text().replace('metric = "top1"', 'metric = "tiny_models:per_sample_error"')
    )
    result = perf_project.runpytest("perf", "-k", "fp32 and torch_cpu")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and (outcomes.get("failed", 0) + outcomes.get("errors", 0)) == 1
    result.stdout.fnmatch_lines(
        [
            "*metric tiny_models:per_sample_error returned ndarray of shape (200,), not a number: return a float*"
        ]
    )
