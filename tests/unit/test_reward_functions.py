"""train.rewards: the built-in reward functions, config checks, plug-in discovery through the entry-point
group, and the scorer's failure reporting (function, row and value named; never silently replaced)."""

from __future__ import annotations

import json
import logging
import math
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from peft_framework import cli
from peft_framework.config.train_schema import TrainConfig
from peft_framework.errors import StageFailed, UserError
from peft_framework.rewards import Reward, RewardScorer, load_rewards


def _rewards(*entries: dict, **train) -> list[Reward]:
    return load_rewards(TrainConfig(rewards=list(entries), **train))


def _one(entry: dict, completions: list, **columns) -> list[float]:
    (reward,) = _rewards(entry)
    return reward(["prompt"] * len(completions), completions, **columns)


# ------------------------------------------------------------------------------------------ built-ins
def test_exact_match_normalises_case_and_whitespace() -> None:
    got = _one(
        {"name": "exact_match", "column": "word"},
        ["  Apple\n", "APPLE  pie", "apple pie", "pear", [{"role": "assistant", "content": " apple "}]],
        word=["apple", "apple   Pie", "apple", "apple", "APPLE"],
    )
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_numeric_match_reads_the_last_number() -> None:
    got = _one(
        {"name": "numeric_match"},
        ["2 + 3 = 5", "so 1,000 it is", "first 5 then 7", "no number", "-0.5", "about 3.0000001"],
        answer=[5, "1000", 5, 1, -0.5, "3"],
    )
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    (loose,) = _rewards({"name": "numeric_match", "abs_tol": 0.0, "rel_tol": 0.1})
    assert loose(["p", "p"], ["105", "120"], answer=[100, 100]) == [1.0, 0.0]


def test_similarity_gives_partial_credit_as_difflib() -> None:
    import difflib

    completions = ["cat", " CAT ", "cart", "c", "dog", ""]
    got = _one({"name": "similarity"}, completions, answer=["cat"] * 6)
    oracle = [difflib.SequenceMatcher(None, c.strip().lower(), "cat").ratio() for c in completions]
    assert got == oracle and got[:2] == [1.0, 1.0] and got[2] == pytest.approx(6 / 7) and got[5] == 0.0
    assert _one({"name": "similarity"}, [""], answer=[""]) == [1.0]


def test_regex_format_modes_and_flags() -> None:
    entry = {"name": "regex_format", "pattern": r"<a>\w+</a>"}
    assert _one(entry, ["<a>cat</a>", "<a>cat</a> more", "x<a>cat</a>"]) == [1.0, 0.0, 0.0]
    assert _one({**entry, "mode": "match"}, ["<a>cat</a> more", "x<a>cat</a>"]) == [1.0, 0.0]
    assert _one({**entry, "mode": "search"}, ["x<a>cat</a>", "<A>cat</A>"]) == [1.0, 0.0]
    assert _one({**entry, "mode": "search", "flags": ["IGNORECASE"]}, ["<A>cat</A>"]) == [1.0]


def test_length_penalises_outside_the_band() -> None:
    entry = {"name": "length", "min": 2, "max": 4, "penalty": 0.25}
    assert _one(entry, ["", "ab", "abcd", "abcdef", "a" * 40]) == [-0.5, 0.0, 0.0, -0.5, -1.0]
    words = {"name": "length", "min": 1, "max": 2, "unit": "words", "penalty": 0.5, "max_penalty": 2.0}
    assert _one(words, ["one", "one two three four", ""]) == [0.0, -1.0, -0.5]


def test_builtins_declare_the_columns_they_need() -> None:
    rewards = _rewards(
        {"name": "exact_match", "column": "word"},
        {"name": "numeric_match"},
        {"name": "regex_format", "pattern": "x"},
        {"name": "length", "max": 3, "weight": -0.5, "label": "short"},
    )
    assert [(r.name, r.columns, r.weight) for r in rewards] == [
        ("exact_match", ("word",), 1.0),
        ("numeric_match", ("answer",), 1.0),
        ("regex_format", (), 1.0),
        ("short", (), -0.5),
    ]


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            [{"name": "exact_mach"}],
            ["unknown reward 'exact_mach'", "did you mean 'exact_match'", "regex_format"],
        ),
        ([{"name": "regex_format"}], ["pattern", "Field required"]),
        ([{"name": "regex_format", "pattern": "(a"}], ["'(a' is not a valid regular expression"]),
        ([{"name": "length", "min": 5, "max": 2}], ["max 2 is below min 5"]),
        ([{"name": "exact_match", "colum": "x"}], ["unknown option 'colum'", "options allowed: column"]),
        ([{"name": "length", "max": 3}, {"name": "length", "min": 1}], ["'length' is used twice", "label"]),
    ],
)
def test_bad_reward_config_is_named(entries: list[dict], expected: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        TrainConfig(rewards=entries)
    for text in expected:
        assert text in str(info.value)


def test_a_reward_from_an_entry_point(tmp_path, monkeypatch, capsys) -> None:
    """A package that registers under `peft_framework.rewards` (here a dist-info on sys.path, as pip leaves it)
    is found by name, its options go to its class, and an unknown name lists it."""
    package = tmp_path / "my_rewards.py"
    package.write_text(
        "class Contains:\n"
        "    def __init__(self, word):\n"
        "        self.word = word\n"
        "        self.columns = ()\n"
        "    def __call__(self, prompts, completions, **kw):\n"
        "        return [float(self.word in c) for c in completions]\n"
        "def always_one(prompts, completions, **kw):\n"
        "    return [1.0] * len(completions)\n"
    )
    info = tmp_path / "my_rewards-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[peft_framework.rewards]\ncontains = my_rewards:Contains\nalways_one = my_rewards:always_one\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    contains, one = _rewards({"name": "contains", "word": "cat"}, {"name": "always_one", "weight": 0.5})
    assert (contains.origin, one.origin) == ("my-rewards 1.0", "my-rewards 1.0")
    assert contains(["p", "p"], ["a cat", "a dog"]) == [1.0, 0.0]
    assert one(["p"], ["x"]) == [1.0]
    with pytest.raises(UserError, match="takes no options"):
        _rewards({"name": "always_one", "x": 1})
    with pytest.raises(UserError, match="rejects its options"):
        _rewards({"name": "contains", "colour": "red"})
    with pytest.raises(ValidationError, match="always_one, contains, exact_match"):
        TrainConfig(rewards=[{"name": "nope"}])
    # `peft-framework rewards` lists the built-ins with their options and the plug-ins with their origin
    assert cli.main(["rewards", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert (
        rows["contains"]["origin"] == "my-rewards 1.0" and rows["contains"]["target"] == "my_rewards:Contains"
    )
    assert rows["regex_format"]["required"] == ["pattern"] and rows["exact_match"]["options"] == {
        "column": "answer"
    }
    assert cli.main(["rewards"]) == 0
    table = capsys.readouterr().out
    assert "always_one" in table and "pattern (required), mode=fullmatch" in table
    sys.modules.pop("my_rewards", None)


# ------------------------------------------------------------------------------------------- scorer
def test_total_is_the_weighted_nansum_as_in_trl() -> None:
    rewards = _rewards(
        {"name": "exact_match", "weight": 2.0},
        {"name": "regex_format", "pattern": "[a-z]+", "weight": 0.5},
    )
    applies = Reward("sometimes", 1.0, lambda p, c, **kw: [None, 3.0, 1])
    as_array = Reward("array", 0.0, lambda p, c, **kw: np.array([1.0, 2.0, 3.0]))
    result = RewardScorer([*rewards, applies, as_array]).score(
        ["p"] * 3, ["cat", "Dog", "7"], {"answer": ["cat", "dog", "8"]}, ["a", "b", "c"]
    )
    per = result.per_function
    assert per["exact_match"].tolist() == [1.0, 1.0, 0.0]
    assert per["regex_format"].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(per["sometimes"][0]) and per["sometimes"][1:].tolist() == [3.0, 1.0]
    assert per["array"].tolist() == [1.0, 2.0, 3.0]  # numpy arrays and tensors are lists of numbers too
    stacked = torch.stack(list(per.values()), dim=1)  # TRL: (rewards_per_func * weights).nansum(dim=1)
    expected = (stacked * torch.tensor([2.0, 0.5, 1.0, 0.0])).nansum(dim=1)
    assert torch.equal(result.total, expected) and result.total.tolist() == [2.5, 5.0, 1.0]
    assert result.failures == 0  # None means "does not apply" (TRL), not a failure


def test_failures_name_function_row_and_value(caplog) -> None:
    def picky(prompts, completions, **kw):
        if any(c == "boom" for c in completions):
            raise RuntimeError("cannot parse 'boom'")
        return [len(c) for c in completions]

    bad_values = Reward("bad_values", 1.0, lambda p, c, **kw: ["high", float("inf"), 1.0])
    scorer = RewardScorer([Reward("picky", 1.0, picky), bad_values], max_failures=10)
    with caplog.at_level(logging.WARNING, logger="peft_framework.rewards.scorer"):
        result = scorer.score(
            ["p"] * 3, ["ok", "boom", "abc"], {}, ["data.jsonl:3", "data.jsonl:7", "data.jsonl:9"]
        )
    # the batch call raised: retried row by row, so only the bad row is lost and it is named
    assert result.per_function["picky"][0] == 2 and result.per_function["picky"][2] == 3
    assert math.isnan(result.per_function["picky"][1])
    assert result.failures == 3
    assert result.new_failures == [
        "reward 'picky' failed on row data.jsonl:7: raised RuntimeError: cannot parse 'boom'",
        "reward 'bad_values' failed on row data.jsonl:3: returned 'high' (str), not a number",
        "reward 'bad_values' failed on row data.jsonl:7: returned inf (float), not a finite number",
    ]
    assert [r.getMessage() for r in caplog.records] == result.new_failures
    assert result.total.tolist() == [2.0, 0.0, 4.0]  # the failed values are NaN, left out of the sum
    wrong_length = Reward("short", 1.0, lambda p, c, **kw: [1.0])
    result = RewardScorer([wrong_length], max_failures=10).score(["p", "p"], ["a", "b"], {}, [0, 1])
    assert (
        result.new_failures[0]
        == "reward 'short' failed on row 0: returned 1 values for a batch of 2 completions"
    )


def test_failures_past_the_limit_stop_the_run() -> None:
    flaky = Reward("flaky", 1.0, lambda p, c, **kw: [None if x == "ok" else {"score": 1} for x in c])
    scorer = RewardScorer([flaky], max_failures=2)
    assert scorer.score(["p", "p"], ["x", "ok"], {}, ["r1", "r2"]).failures == 1
    assert scorer.score(["p"], ["y"], {}, ["r3"]).failures == 2  # the limit itself is allowed
    with pytest.raises(StageFailed) as info:
        scorer.score(["p", "p"], ["ok", "z"], {}, ["r4", "r5"])
    message = str(info.value)
    assert "3 reward values failed, more than the 2 allowed" in message
    assert "train.max_reward_failures" in message
    assert "reward 'flaky' failed on row r5: returned {'score': 1} (dict), not a number" in message
    assert isinstance(info.value, UserError)  # the CLI prints `error: ...` and exits 2
