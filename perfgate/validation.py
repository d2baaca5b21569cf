"""Typed, ranged settings: one rule per key, so that a wrong value is refused with its key and range.

The policies (``AccuracyPolicy``, ``RegressionPolicy``, ``TimingPolicy``) and each technique's
options declare a :class:`Rule` per key. The matrix loader (perfgate/matrix.py) applies them to
every table of the file before any case runs, and adds the file and the table to the message:
``matrix.toml: [timing] min_rounds = 0: must be an integer >= 1``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="Settings")


class SettingError(ValueError):
    """One setting has the wrong type or is out of range, or its key is unknown.

    :param key: the key, dotted when nested (``calibration.size``).
    :param value: the value the file gave it.
    :param rule: what is wrong, and what is valid (``must be an integer >= 1``).
    """

    def __init__(self, key: str, value: Any, rule: str) -> None:
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key} is not set: {rule}" if value is None else f"{key} = {show(value)}: {rule}")

    def under(self, prefix: str) -> SettingError:
        """The same error, its key nested under ``prefix`` (``options`` -> ``options.amount``)."""
        return SettingError(f"{prefix}.{self.key}", self.value, self.rule)


def show(value: Any) -> str:
    """``value`` as the TOML file writes it: ``"text"``, ``true``, ``nan``, ``[1, 2]``, ``{ a = 1 }``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {show(v)}" for k, v in value.items()) + " }"
    return repr(value)


@dataclass(frozen=True)
class Rule:
    """What one setting may be.

    :param text: the valid values in words (``an integer >= 1``), completed by ``hint``.
    :param test: whether a value is valid (called only for a non-table rule).
    :param fields: for a table (``calibration = { ... }``): its keys and their rules.
    :param imports: the value is a ``"package.module:attribute"`` path that must import.
    :param hint: what the setting means, shown after the range (``the share of the reference kept``).
    """

    text: str
    test: Callable[[Any], bool] = lambda value: True
    fields: Mapping[str, Rule] | None = None
    imports: bool = False
    hint: str = ""

    def describe(self) -> str:
        return f"{self.text} ({self.hint})" if self.hint else self.text

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`SettingError` naming ``key`` unless ``value`` is valid."""
        if self.fields is None:
            if not self.test(value):
                raise SettingError(key, value, f"must be {self.describe()}")
            return
        if not isinstance(value, dict):
            raise SettingError(key, value, f"must be {self.describe()}")
        check_table(value, self.fields, f"{key.rpartition('.')[2]} key", prefix=f"{key}.")


def check_table(table: Mapping[str, Any], rules: Mapping[str, Rule], what: str, prefix: str = "") -> None:
    """Check every key of ``table`` against ``rules``: unknown keys first, then each value.

    :param what: names a key in the unknown-key message (``accuracy setting``, ``option of qat``).
    :param prefix: put before each key in the message (``calibration.``).
    """
    unknown = sorted(set(table) - set(rules))
    if unknown:
        key = unknown[0]
        raise SettingError(f"{prefix}{key}", table[key], f"unknown {what}; valid: {', '.join(sorted(rules))}")
    for key, value in table.items():
        rules[key].check(f"{prefix}{key}", value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(minimum: int, hint: str = "") -> Rule:
    """An integer (not a bool, not a float such as ``3.0``) of at least ``minimum``."""
    return Rule(
        f"an integer >= {minimum}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
        hint=hint,
    )


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> Rule:
    """A finite int or float within the bounds (open or closed); ``None`` leaves a side unbounded."""
    if low is not None and high is not None:
        text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        text = "a finite number"

    def test(value: Any) -> bool:
        if not _is_number(value) or not math.isfinite(value):
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        return high is None or (value < high if high_open else value <= high)

    return Rule(text, test, hint=hint)


def optional(rule: Rule) -> Rule:
    """``rule``, or ``None`` (from Python: a technique's defaults switch a check off with it)."""
    return Rule(rule.text, lambda v: v is None or rule.test(v), rule.fields, rule.imports, rule.hint)


def boolean(hint: str = "") -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool), hint=hint)


def choice(*values: str, hint: str = "") -> Rule:
    return Rule(f"one of {', '.join(values)}", lambda v: isinstance(v, str) and v in values, hint=hint)


def string(hint: str = "") -> Rule:
    return Rule("a string", lambda v: isinstance(v, str), hint=hint)


def import_path(hint: str = "") -> Rule:
    """A ``"package.module:attribute"`` string; the matrix loader also imports it."""
    return Rule(
        'a "package.module:function" string',
        lambda v: isinstance(v, str) and all(v.partition(":")[::2]) and ":" in v,
        imports=True,
        hint=hint,
    )


def table(hint: str = "", **fields: Rule) -> Rule:
    """A nested table whose keys are ``fields``."""
    return Rule(f"a table {{ {', '.join(fields)} }}", fields=fields, hint=hint)


class Settings:
    """Base of a frozen dataclass of settings whose keys each have a :class:`Rule` (the policies).

    A subclass sets :attr:`RULES` and :attr:`KIND`, and gets :meth:`merged`.
    """

    RULES: ClassVar[Mapping[str, Rule]]
    # Names a key in the unknown-key message: ``unknown timing setting``.
    KIND: ClassVar[str]

    def merged(self: S, overrides: Mapping[str, Any]) -> S:
        """A copy with ``overrides`` applied, each checked against :attr:`RULES`.

        :raises SettingError: a key is unknown or a value has the wrong type or range.
        """
        check_table(overrides, self.RULES, self.KIND)
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]  # each subclass is a dataclass
