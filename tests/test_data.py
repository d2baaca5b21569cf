"""Model data: which split calibrates static quantization, and the refusal to calibrate on eval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perfgate.data import CalibrationDataError, ModelData
from perfgate.registry import import_object

EVAL = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=np.float32)
LABELS = np.array([0, 1, 0], dtype=np.int64)
TRAIN = np.array([[10.0, 11.0], [12.0, 13.0], [14.0, 15.0], [16.0, 17.0]], dtype=np.float32)
CALIBRATION = np.array([[20.0, 21.0], [22.0, 23.0]], dtype=np.float32)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "custom_model"


def test_calibration_split_comes_first() -> None:
    """With every split present, the calibration split calibrates, cut to ``size``."""
    data = ModelData("full", EVAL, LABELS, TRAIN, None, calibration=CALIBRATION)
    assert data.calibration_source == "calibration"
    np.testing.assert_array_equal(data.calibration_set(1), [[20.0, 21.0]])
    np.testing.assert_array_equal(data.calibration_set(100), CALIBRATION)


def test_training_split_is_the_fallback() -> None:
    """Without a calibration split, the training inputs calibrate."""
    data = ModelData("no-calibration", EVAL, LABELS, train_inputs=TRAIN)
    assert data.calibration_source == "train"
    np.testing.assert_array_equal(data.calibration_set(2), [[10.0, 11.0], [12.0, 13.0]])


def test_eval_only_data_refuses_to_calibrate_and_says_how_to_fix_it() -> None:
    """Neither split: a CalibrationDataError (a ValueError) naming the data set and both fixes."""
    data = ModelData("eval-only-set", EVAL, LABELS)
    assert data.calibration_source == "eval"
    with pytest.raises(CalibrationDataError) as raised:
        data.calibration_set(2)
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert "'eval-only-set'" in message
    assert "no calibration or training split" in message
    assert "calibration=" in message and "train_inputs=" in message
    assert "calibrate_on_eval = true" in message and "[models.NAME]" in message


def test_opt_in_calibrates_on_the_eval_inputs() -> None:
    """With ``calibrate_on_eval``, a data set with neither split calibrates on its eval inputs."""
    data = ModelData("eval-only-set", EVAL, LABELS, calibrate_on_eval=True)
    assert data.calibration_source == "eval"
    np.testing.assert_array_equal(data.calibration_set(2), [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(data.calibration_set(10), EVAL)


@pytest.mark.parametrize(
    ("calibration", "train", "source", "first"),
    [(CALIBRATION, TRAIN, "calibration", 20.0), (None, TRAIN, "train", 10.0)],
    ids=["calibration", "train"],
)
def test_opt_in_does_not_override_a_real_split(
    calibration: np.ndarray | None, train: np.ndarray, source: str, first: float
) -> None:
    """The opt-in only permits the eval fallback: a calibration or training split still wins."""
    data = ModelData("opted-in", EVAL, LABELS, train, None, calibration, calibrate_on_eval=True)
    assert data.calibration_source == source
    assert data.calibration_set(1)[0, 0] == first


def test_opt_in_is_off_by_default_and_last() -> None:
    """Existing positional constructors keep working: the new field is last and defaults to False."""
    data = ModelData("wine-like", EVAL, LABELS, TRAIN, None, CALIBRATION)
    assert data.calibrate_on_eval is False
    assert ModelData("flagged", EVAL, LABELS, None, None, None, True).calibrate_on_eval is True


def test_fingerprint_follows_the_calibration_data_but_not_the_opt_in() -> None:
    """The arrays are hashed (another calibration split is another key); the opt-in is not."""
    base = ModelData("fp", EVAL, LABELS, calibration=CALIBRATION)
    other = ModelData("fp", EVAL, LABELS, calibration=CALIBRATION + 1.0)
    assert base.fingerprint() != other.fingerprint()
    eval_only = ModelData("fp", EVAL, LABELS)
    assert ModelData("fp", EVAL, LABELS, calibrate_on_eval=True).fingerprint() == eval_only.fingerprint()


@pytest.mark.parametrize(
    "path",
    [
        "fixtures.digits:digits",
        "fixtures.generated:imagenet_shaped",
        "fixtures.generated:bert_shaped",
        "tiny_models:blobs",
        "my_models:wine",
    ],
)
def test_shipped_data_sets_calibrate_without_the_opt_in(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every data set the project ships has a calibration or training split: none needs the opt-in."""
    monkeypatch.syspath_prepend(str(EXAMPLES))  # where my_models lives
    data = import_object(path)()  # type: ignore[operator]
    assert not data.calibrate_on_eval
    assert data.calibration_source in ("calibration", "train")
    assert len(data.calibration_set(8)) == 8
