"""data.kind prompt (GRPO prompts): fields, extra columns kept for the rewards, cleaning reasons through the
real prepare stage (empty prompt, no room left for a completion, a column a reward needs missing)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest

from peft_framework.config import load_config
from peft_framework.data.stage import prepare
from peft_framework.errors import DataError
from peft_framework.inspect_data import inspect_data
from peft_framework.models.loading import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "params" / "tiny-llama.yaml")

ROWS = [
    {"prompt": "Repeat the word: cat", "answer": "cat", "n": 1, "tags": ["a"]},
    {"prompt": "Repeat the word: cat", "answer": "cat", "n": 1, "tags": ["a"]},  # duplicate
    {"prompt": "Repeat the word: cat", "answer": "dog", "n": 2.5},  # same prompt, other answer: kept
    {"prompt": "   ", "answer": "x"},  # empty prompt
    {"prompt": "Repeat the word: sun"},  # no answer, which exact_match reads
    {"prompt": "Repeat the word: sky", "answer": None},  # a null answer
    {"prompt": [{"role": "user", "content": "Repeat the word: tree"}], "answer": "tree", "n": 3},
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "answer": "a"},
    {"prompt": "word " * 40, "answer": "word"},  # no room left for a completion
    {"prompt": "Repeat the word: moon", "answer": "moon", "n": "three"},  # n is a number in most rows
    {"prompt": "Repeat the word: star", "answer": "star", "meta": {"nested": 1}},  # nested value
]


def _config(tmp_path: Path, rows: list, rewards: list, *overrides: str):
    raw = tmp_path / "data" / "raw" / "prompts.jsonl"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_config(
        PRESET,
        [
            "data.source=data/raw/prompts.jsonl",
            "data.kind=prompt",
            "train.objective=grpo",
            "data.max_seq_len=80",
            "train.grpo.max_completion_length=16",
            "data.split.validation=0",
            "data.split.test=0",
            "data.validate.max_rejected_fraction=0.9",
            f"train.rewards={json.dumps(rewards)}",
            *overrides,
        ],
    )


def test_prompt_rows_keep_their_columns_and_are_rejected_with_reasons(tmp_path: Path) -> None:
    config = _config(tmp_path, ROWS, [{"name": "exact_match"}, {"name": "regex_format", "pattern": "\\w+"}])
    summary = prepare(config, tmp_path)
    rejected = [json.loads(line) for line in (tmp_path / "data" / "rejected.jsonl").read_text().splitlines()]
    reasons = {r["row"]: (r["reasons"][0], r["details"][0]) for r in rejected}
    assert summary["rows"]["read"] == len(ROWS) == summary["rows"]["kept"] + summary["rows"]["rejected"]
    assert {row: reason for row, (reason, _) in reasons.items()} == {
        1: "duplicate_exact",
        3: "empty_field",
        4: "missing_field",
        5: "missing_field",
        7: "invalid_role_order",
        8: "prompt_too_long",
        9: "wrong_type",
        10: "wrong_type",
    }
    assert reasons[4][1] == "column 'answer' (read by reward 'exact_match') is missing"
    assert reasons[5][1] == "column 'answer' (read by reward 'exact_match') is null"
    assert "leaves 64" in reasons[8][1] and "train.grpo.max_completion_length 16" in reasons[8][1]
    assert "column 'n' holds a string ('three') but a float in most rows" in reasons[9][1]
    assert "column 'meta'" in reasons[10][1]

    train = datasets.load_from_disk(str(tmp_path / "data" / "prepared"))["train"]
    assert train.column_names == ["prompt_ids", "prompt", "answer", "n", "tags", "source"]
    assert train.features["n"].dtype == "float64" and train.features["tags"].feature.dtype == "string"
    assert [s.rsplit(":", 1)[1] for s in train["source"]] == ["1", "3", "7"]
    assert train["answer"] == ["cat", "dog", "tree"]
    assert train["n"] == [1.0, 2.5, 3.0] and train["tags"] == [["a"], None, None]
    tok = load_tokenizer(config.model)
    text, chat = train[0], train[2]
    assert text["prompt"] == "Repeat the word: cat\n"
    assert text["prompt_ids"] == tok(text["prompt"])["input_ids"]  # with the special tokens it adds
    expected_chat = tok.apply_chat_template(
        [{"role": "user", "content": "Repeat the word: tree"}], tokenize=False, add_generation_prompt=True
    )
    assert chat["prompt"] == expected_chat and chat["prompt"].endswith("<|assistant|>\n")
    assert chat["prompt_ids"] == tok(expected_chat, add_special_tokens=False)["input_ids"]
    manifest = json.loads((tmp_path / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["kind"] == "prompt"
    out = io.StringIO()  # inspect-data shows each prompt as tokenized and the columns the rewards read
    shown = inspect_data(config, tmp_path, rows=3, out=out, colour=False)
    assert shown["rows"] == 3 and shown["rejected"] == 8
    assert "prompt tokens: 21\nRepeat the word: cat\n" in out.getvalue()
    assert '"answer": "tree", "n": 3.0' in out.getvalue()


def test_what_the_rewards_need_enters_the_data_hash(tmp_path: Path) -> None:
    rows = [{"prompt": f"Repeat the word: w{i}", "answer": f"w{i}"} for i in range(6)]
    first = prepare(_config(tmp_path, rows, [{"name": "exact_match"}]), tmp_path)
    again = prepare(_config(tmp_path, rows, [{"name": "exact_match"}]), tmp_path)
    other_column = prepare(_config(tmp_path, rows, [{"name": "numeric_match", "column": "answer"}]), tmp_path)
    longer = prepare(
        _config(tmp_path, rows, [{"name": "exact_match"}], "train.grpo.max_completion_length=20"), tmp_path
    )
    assert first["config_sha256"] == again["config_sha256"]
    assert len({first["config_sha256"], other_column["config_sha256"], longer["config_sha256"]}) == 3


def test_no_room_at_all_is_named(tmp_path: Path) -> None:
    rows = [{"prompt": f"Repeat the word: w{i}", "answer": f"w{i}"} for i in range(4)]
    config = _config(tmp_path, rows, [], "train.grpo.max_completion_length=80")
    with pytest.raises(DataError, match="prompt_too_long: 4"):
        prepare(config, tmp_path)


def test_sample_prompts_prepare_as_described(tmp_path: Path) -> None:
    """`sample-data`'s prompts.jsonl under PROMPT_DATA + PROMPT_TRAIN: the counts its generator states, every
    kept row answerable by its reward (the answer is the prompt's last word)."""
    from peft_framework.data.sample_prompts import PROMPT_DATA, PROMPT_TRAIN
    from peft_framework.data.samples import write_samples

    expected = write_samples(tmp_path / "data" / "raw")["prompts.jsonl"]["expected"]
    overrides = [f"data.{k}={json.dumps(v)}" for k, v in PROMPT_DATA.items()]
    overrides += [f"train.{k}={json.dumps(v)}" for k, v in PROMPT_TRAIN.items()]
    overrides.append(
        "data.split.test=0.25"
    )  # params/grpo.yaml's split: two words x 20 phrasings are 40 prompts
    summary = prepare(load_config(PRESET, overrides), tmp_path)
    assert summary["rows"]["read"] == expected["read"] and summary["rows"]["kept"] == expected["kept"]
    assert summary["rejected_by_reason"] == expected["rejected_by_reason"]
    data = datasets.load_from_disk(str(tmp_path / "data" / "prepared"))
    assert len(data["test"]) >= 10 and len(data["train"]) >= 20
    assert {row["answer"] for row in data["train"]} == {"cat", "dog"}
    for row in data["test"]:
        assert row["prompt"].rstrip("\n").endswith(" " + row["answer"])
