"""data.kind preference / unpaired_preference: fields, cleaning reasons, chat splitting, truncation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest

from peft_framework.config import load_config
from peft_framework.data.preference import truncate
from peft_framework.data.stage import prepare
from peft_framework.errors import ConfigError
from peft_framework.inspect_data import inspect_data

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "params" / "tiny-llama.yaml")

PAIRS = [
    {"prompt": "Say a color.", "chosen": "blue", "rejected": "red"},
    {"prompt": "Say a color.", "chosen": "blue", "rejected": "red"},  # duplicate pair
    {"prompt": "Say a color.", "chosen": "blue", "rejected": "green"},  # same prompt, other pair: kept
    {"prompt": "Name a fruit", "chosen": "Apple", "rejected": " apple "},  # identical after normalisation
    {"prompt": "", "chosen": "x", "rejected": "y"},  # empty prompt
    {"prompt": "Hm", "chosen": "  ", "rejected": "y"},  # empty answer
    {  # HH style: split at the first divergent turn
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
    },
    {  # no shared prefix
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "b"}],
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": "5",
    },
    {"prompt": "long " * 20, "chosen": "ok", "rejected": "no"},  # prompt alone fills max_seq_len
]


def _prepare(tmp_path: Path, rows: list, *overrides: str) -> tuple[dict, list, datasets.DatasetDict]:
    raw = tmp_path / "data" / "raw" / "p.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        PRESET,
        [
            "data.source=data/raw/p.jsonl",
            "data.max_seq_len=48",
            "data.split.validation=0",
            "data.split.test=0",
            "data.validate.max_rejected_fraction=0.9",
            *overrides,
        ],
    )
    summary = prepare(config, tmp_path)
    rejected = [json.loads(line) for line in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    return summary, rejected, datasets.load_from_disk(str(tmp_path / "data" / "prepared"))


def test_pairs_are_cleaned_with_reasons_and_nothing_lost(tmp_path: Path) -> None:
    summary, rejected, data = _prepare(tmp_path, PAIRS, "data.kind=preference", "train.objective=dpo")
    assert summary["rows"]["read"] == len(PAIRS) == summary["rows"]["kept"] + summary["rows"]["rejected"]
    assert {r["row"]: r["reasons"][0] for r in rejected} == {
        1: "duplicate_exact",
        3: "identical_answers",
        4: "empty_field",
        5: "empty_field",
        7: "no_shared_prefix",
        9: "no_response_tokens",
    }
    train = data["train"]
    assert [s.rsplit(":", 1)[1] for s in train["source"]] == ["1", "3", "7", "9"]
    hh = train[2]
    assert hh["chosen"] == "hello there" and hh["rejected"] == "go away"
    assert hh["prompt"].endswith("<|assistant|>\n") and "hi" in hh["prompt"]
    for row in train:
        for side in ("chosen", "rejected"):
            ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
            cut = next(i for i, t in enumerate(labels) if t != -100)
            assert labels[cut:] == ids[cut:] and ids[-1] == 2  # answer trained, ending with EOS
            assert all(t == -100 for t in labels[:cut])
        # the prompt's tokens are the same on both sides
        cut = sum(t == -100 for t in row["chosen_labels"])
        assert row["chosen_input_ids"][:cut] == row["rejected_input_ids"][:cut]
    # inspect-data shows each pair's two answers with their trained tokens marked
    out = io.StringIO()
    config = load_config(PRESET, ["data.kind=preference", "train.objective=dpo", "data.max_seq_len=48"])
    shown = inspect_data(config, tmp_path, rows=1, out=out, colour=False)
    assert shown["rows"] == 1 and shown["rejected"] == 6
    assert (
        "chosen: tokens" in out.getvalue()
        and "⟦blue</s>⟧" in out.getvalue()
        and "⟦red</s>⟧" in out.getvalue()
    )


def test_unpaired_labels_must_be_booleans(tmp_path: Path) -> None:
    rows = [
        {"prompt": "q1", "completion": "good", "label": True},
        {"prompt": "q2", "completion": "bad", "label": False},
        {"prompt": "q3", "completion": "meh", "label": "yes"},
        {"prompt": "q4", "completion": "meh", "label": 1},
        {"prompt": "q5", "completion": "meh"},
    ]
    summary, rejected, data = _prepare(tmp_path, rows, "data.kind=unpaired_preference", "train.objective=kto")
    assert [r["reasons"] for r in rejected] == [["invalid_label"]] * 3
    assert data["train"]["label"] == [True, False]
    assert summary["rows"]["kept"] == 2


def test_truncation_keeps_prompt_end_or_start() -> None:
    ids = list(range(10))  # 6 prompt tokens, 4 answer tokens
    assert truncate(ids, 6, 8, "keep_start") == ([0, 1, 2, 3, 4, 5, 6, 7], 6)
    assert truncate(ids, 6, 8, "keep_end") == ([2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert truncate(ids, 6, 3, "keep_end") == ([6, 7, 8], 0)
    assert truncate(ids, 6, 5, "keep_start")[1] == 5  # no answer token: the caller rejects the row


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.objective=dpo"], "data.kind is 'instruction'"),
        (["data.kind=preference"], "allowed for this data: dpo, ipo, orpo, simpo"),
        (["data.kind=preference", "train.objective=kto"], "allowed for this data: dpo"),
        (["data.kind=preference", "train.objective=dpo", "train.packing=true"], "train.packing"),
        (["train.objective=dpx"], "did you mean 'dpo'"),
    ],
)
def test_objective_and_data_kind_must_agree(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(PRESET, overrides)
    assert needle in str(err.value)
