"""The promotion decision (export.promote) from numbers-only reports."""

from __future__ import annotations

import pytest

from peft_framework.config.schema import PromoteConfig
from peft_framework.errors import UserError
from peft_framework.export.promote import decide

EVAL = {"base.accuracy": 0.4, "adapter.accuracy": 0.9, "base.loss": 0.7, "adapter.loss": 0.2}
EXPORT = {"parity_passed": 1, "parity_max_abs_diff": 1e-7, "parity_atol": 1e-3}


def test_promotes_when_the_gain_and_parity_hold() -> None:
    d = decide(PromoteConfig(metric="accuracy", min_delta=0.3), EVAL, EXPORT)
    assert d["promote"] is True
    assert [c["rule"] for c in d["checks"]] == ["metric", "parity"]
    assert d["checks"][0]["gain"] == pytest.approx(0.5)


def test_says_which_rule_failed_with_its_numbers() -> None:
    d = decide(PromoteConfig(metric="accuracy", min_delta=0.6), EVAL, {**EXPORT, "parity_passed": 0})
    assert d["promote"] is False
    assert d["reasons"][0].startswith("FAILED: accuracy") and "0.5 < min_delta 0.6" in d["reasons"][0]
    assert d["reasons"][1].startswith("FAILED: export parity: failed")


def test_lower_is_better_and_parity_not_required() -> None:
    rules = PromoteConfig(metric="loss", min_delta=0.4, lower_is_better=True, require_parity=False)
    d = decide(rules, EVAL, {})
    assert d["promote"] is True and len(d["checks"]) == 1
    assert not decide(rules.model_copy(update={"min_delta": 0.6}), EVAL, {})["promote"]


def test_off_and_unknown_metric() -> None:
    assert decide(None, EVAL, EXPORT)["promote"] is False
    with pytest.raises(
        UserError, match="export.promote.metric: .*'base.rougeL'.*allowed metrics there: accuracy, loss"
    ):
        decide(PromoteConfig(metric="rougeL"), EVAL, EXPORT)
