"""Invalid configs: every problem is one line naming the YAML key path, the bad value and what is allowed.

Each case is (raw config, overrides, the key path the line must start with, other text the line must hold).
"""

from __future__ import annotations

from typing import Any

import pytest

from peft_framework.config import load_config, resolve_config
from peft_framework.errors import ConfigError

CASES: list[tuple[str, dict[str, Any], list[str], str, list[str]]] = [
    # ---- wrong types
    (
        "int-as-word",
        {"train": {"batch_size": "eight"}},
        [],
        "train.batch_size",
        ['"eight"', "an integer >= 1"],
    ),
    ("int-as-float", {"eval": {"batch_size": 2.5}}, [], "eval.batch_size", ["2.5", "an integer"]),
    ("str-as-int", {"model": {"name_or_path": 123}}, [], "model.name_or_path", ["123", "a string"]),
    (
        "bool-as-word",
        {"model": {"trust_remote_code": "maybe"}},
        [],
        "model.trust_remote_code",
        ["true or false"],
    ),
    (
        "mapping-as-list",
        {"data": {"clean": {"label_aliases": ["a", "b"]}}},
        [],
        "data.clean.label_aliases",
        ["mapping of strings to strings"],
    ),
    (
        "list-item-type",
        {"data": {"validate": {"allowed_roles": ["user", 3]}}},
        [],
        "data.validate.allowed_roles[1]",
        ["3", "a list of strings"],
    ),
    (
        "union-no-member",
        {"adapter": {"target_modules": 5}},
        [],
        "adapter.target_modules",
        ["got 5", "a string, a list of strings or null"],
    ),
    ("section-not-mapping", {"train": 5}, [], "train", ["got 5", "a mapping with keys", "batch_size"]),
    ("adapter-not-mapping", {"adapter": "lora"}, [], "adapter", ['"lora"', "a mapping"]),
    (
        "float-as-word",
        {"data": {"validate": {"max_rejected_fraction": "half"}}},
        [],
        "data.validate.max_rejected_fraction",
        ['"half"', "a number >= 0 and <= 1"],
    ),
    # ---- out of range
    ("batch-size-zero", {"train": {"batch_size": 0}}, [], "train.batch_size", ["got 0", ">= 1"]),
    ("negative-lr", {"train": {"learning_rate": -1e-4}}, [], "train.learning_rate", ["-0.0001", "> 0"]),
    ("zero-epochs", {"train": {"epochs": 0}}, [], "train.epochs", ["got 0", "> 0"]),
    ("max-steps-below-minus-one", {"train": {"max_steps": -2}}, [], "train.max_steps", ["-2", ">= -1"]),
    (
        "num-labels-one",
        {"model": {"num_labels": 1}},
        [],
        "model.num_labels",
        ["got 1", "an integer >= 2 or null"],
    ),
    (
        "split-fraction-over-one",
        {"data": {"split": {"validation": 1.5}}},
        [],
        "data.split.validation",
        ["1.5", "< 1"],
    ),
    ("split-negative", {"data": {"split": {"test": -0.1}}}, [], "data.split.test", ["-0.1", ">= 0"]),
    (
        "split-sum",
        {"data": {"split": {"validation": 0.5, "test": 0.5}}},
        [],
        "data.split",
        ["leaves no training data", "sum < 1"],
    ),
    (
        "rejected-fraction",
        {"data": {"validate": {"max_rejected_fraction": 2}}},
        [],
        "data.validate.max_rejected_fraction",
        ["got 2", "<= 1"],
    ),
    ("short-seq-len", {"data": {"max_seq_len": 4}}, [], "data.max_seq_len", ["got 4", ">= 8"]),
    (
        "negative-min-chars",
        {"data": {"clean": {"min_chars": -1}}},
        [],
        "data.clean.min_chars",
        ["-1", ">= 0"],
    ),
    ("lora-rank-zero", {"adapter": {"type": "lora", "r": 0}}, [], "adapter.r", ["got 0", ">= 1"]),
    ("lora-alpha-zero", {"adapter": {"alpha": 0}}, [], "adapter.alpha", ["got 0", "> 0"]),
    ("lora-dropout-one", {"adapter": {"dropout": 1.0}}, [], "adapter.dropout", ["1.0", ">= 0 and < 1"]),
    ("parity-atol-zero", {"export": {"parity_atol": 0}}, [], "export.parity_atol", ["got 0", "> 0"]),
    ("max-new-tokens-zero", {"eval": {"max_new_tokens": 0}}, [], "eval.max_new_tokens", ["got 0", ">= 1"]),
    # ---- not one of the choices
    (
        "scheduler-choice",
        {"train": {"scheduler": "cosin"}},
        [],
        "train.scheduler",
        ['"cosin"', "one of linear, cosine"],
    ),
    (
        "precision-choice",
        {"train": {"precision": "fp8"}},
        [],
        "train.precision",
        ['"fp8"', "fp32, bf16, fp16, auto"],
    ),
    ("task-choice", {"model": {"task": "seq2seq"}}, [], "model.task", ["causal_lm, sequence_classification"]),
    (
        "dtype-choice",
        {"model": {"dtype": "float64"}},
        [],
        "model.dtype",
        ["float32, bfloat16, float16, auto"],
    ),
    (
        "kind-choice",
        {"data": {"kind": "dialog"}},
        [],
        "data.kind",
        ["instruction, chat, text, classification"],
    ),
    (
        "dedup-choice",
        {"data": {"clean": {"dedup": "fuzzy"}}},
        [],
        "data.clean.dedup",
        ["none, exact, normalized"],
    ),
    (
        "export-dtype-choice",
        {"export": {"dtype": "int8"}},
        [],
        "export.dtype",
        ["float32, bfloat16, float16"],
    ),
    ("lora-bias-choice", {"adapter": {"bias": "some"}}, [], "adapter.bias", ["none, all, lora_only"]),
    ("lora-init-choice", {"adapter": {"init": "xavier"}}, [], "adapter.init", ["kaiming, gaussian"]),
    # ---- unknown keys and misspellings
    ("unknown-section", {"trian": {"epochs": 2}}, [], "trian", ["unknown section", "did you mean 'train'"]),
    (
        "misspelled-train-key",
        {"train": {"lerning_rate": 1e-4}},
        [],
        "train.lerning_rate",
        ["did you mean 'train.learning_rate'"],
    ),
    ("misspelled-subsection", {"data": {"clen": {}}}, [], "data.clen", ["did you mean 'data.clean'"]),
    (
        "misspelled-nested-key",
        {"data": {"validate": {"max_rejected_fractoin": 0.1}}},
        [],
        "data.validate.max_rejected_fractoin",
        ["did you mean 'data.validate.max_rejected_fraction'"],
    ),
    ("misspelled-adapter-key", {"adapter": {"rr": 4}}, [], "adapter.rr", ["did you mean 'adapter.r'"]),
    (
        "unknown-key-no-match",
        {"model": {"zzzzzz": 1}},
        [],
        "model.zzzzzz",
        ["unknown key", "allowed keys", "task"],
    ),
    (
        "unknown-adapter-key-no-match",
        {"adapter": {"qqqqqqqq": 1}},
        [],
        "adapter.qqqqqqqq",
        ["unknown key", "allowed keys for type 'lora'", "use_rslora"],
    ),
    # ---- adapter type and targets
    (
        "unknown-adapter-type",
        {"adapter": {"type": "lroa"}},
        [],
        "adapter.type",
        ["'lroa' is not a registered adapter type", "did you mean 'lora'"],
    ),
    ("adapter-type-not-string", {"adapter": {"type": 5}}, [], "adapter.type", ["got 5", "lora"]),
    (
        "empty-target-list",
        {"adapter": {"target_modules": []}},
        [],
        "adapter.target_modules",
        ["empty list", "'all-linear' or null"],
    ),
    (
        "empty-target-string",
        {"adapter": {"target_modules": ""}},
        [],
        "adapter.target_modules",
        ["empty string"],
    ),
    (
        "empty-target-name",
        {"adapter": {"target_modules": ["q_proj", " "]}},
        [],
        "adapter.target_modules[1]",
        ["empty module name"],
    ),
    (
        "bad-target-regex",
        {"adapter": {"target_modules": "q_proj[("}},
        [],
        "adapter.target_modules",
        ["not a valid regex"],
    ),
    # ---- overrides
    ("override-without-equals", {}, ["adapter.r"], "override 'adapter.r'", ["expected KEY=VALUE"]),
    ("override-bad-key", {}, ["adapter..r=3"], "override 'adapter..r=3'", ["not a dotted key path"]),
    (
        "override-bad-yaml",
        {},
        ["adapter.target_modules=[q_proj"],
        "override 'adapter.target_modules=[q_proj'",
        ["not valid YAML"],
    ),
    (
        "override-through-scalar",
        {"adapter": {"r": 4}},
        ["adapter.r.x=1"],
        "override 'adapter.r.x=1'",
        ["adapter.r is 4, not a mapping"],
    ),
    ("override-unknown-key", {}, ["train.epoch=3"], "train.epoch", ["did you mean 'train.epochs'"]),
    ("override-bad-value", {}, ["adapter.r=-3"], "adapter.r", ["-3", ">= 1"]),
    ("override-unknown-section", {}, ["trainer.epochs=3"], "trainer", ["did you mean 'train'"]),
    # ---- quantized bases (QLoRA)
    ("quant-bits", {"model": {"quantization": {"bits": 3}}}, [], "model.quantization.bits", ["3", "4, 8"]),
    (
        "quant-4bit-key-with-8bit",
        {"model": {"quantization": {"bits": 8, "quant_type": "nf4"}}},
        [],
        "model.quantization.quant_type",
        ["4-bit only", "bits is 8"],
    ),
    (
        "quant-type-cannot-wrap",
        {"adapter": {"type": "bottleneck"}},
        ["model.quantization.bits=4"],
        "model.quantization.bits",
        ["'bottleneck' cannot wrap", "lora"],
    ),
]


def _problems(data: dict[str, Any], overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        resolve_config(data, overrides)
    return info.value.problems


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("data", "overrides", "path", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_config_names_key_path(
    data: dict[str, Any], overrides: list[str], path: str, fragments: list[str]
) -> None:
    problems = _problems(data, overrides)
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith(f"{path}:"), line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    assert "\n" not in line


def test_all_problems_reported_in_one_pass() -> None:
    data = {
        "model": {"task": "seq2seq"},
        "data": {"clen": {}, "split": {"validation": 2}},
        "adapter": {"r": 0, "alpah": 3},
        "train": {"batch_size": 0, "scheduler": "x"},
        "eval": {"max_new_tokens": -1},
        "export": {"dtype": "int8"},
        "extra": 1,
    }
    problems = _problems(data, ["foo", "train.epochs=0"])
    heads = [p.split(":", 1)[0] for p in problems]
    expected = [
        "override 'foo'",
        "model.task",
        "data.clen",
        "data.split.validation",
        "adapter.alpah",
        "adapter.r",
        "train.batch_size",
        "train.scheduler",
        "train.epochs",
        "eval.max_new_tokens",
        "export.dtype",
        "extra",
    ]
    assert sorted(heads) == sorted(expected)
    # grouped by section in pipeline order, override syntax first
    assert heads[0] == "override 'foo'"
    assert (
        heads.index("model.task")
        < heads.index("data.clen")
        < heads.index("adapter.r")
        < heads.index("train.epochs")
    )


def test_error_message_lists_one_line_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config({"train": {"batch_size": 0, "epochs": 0}})
    text = str(info.value)
    assert text.splitlines()[0] == "invalid config: 2 problems"
    assert text.count("\n  - ") == 2


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        (
            "syntax.yaml",
            "model:\n  name_or_path: [x\n",
            ["syntax.yaml:3:1", "invalid YAML", "expected ',' or ']'"],
        ),
        (
            "dupes.yaml",
            "train:\n  epochs: 1\n  epochs: 2\n",
            ["dupes.yaml:3:3", "duplicate key 'epochs'", "line 2"],
        ),
        ("tabs.yaml", "train:\n\tepochs: 1\n", ["tabs.yaml:2:1", "invalid YAML"]),
        ("syntax.json", '{"train": {"epochs": 1,}}', ["syntax.json:1:24", "invalid JSON"]),
        ("dupes.json", '{"train": {}, "train": {}}', ["dupes.json", "duplicate key 'train'"]),
        ("list.yaml", "- model\n- data\n", ["list.yaml", "top level must be a mapping"]),
        ("binary.yaml", b"\xff\xfe\x00model", ["binary.yaml", "not UTF-8"]),
    ],
)
def test_unreadable_files_are_config_errors(
    tmp_path, name: str, text: str | bytes, fragments: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_file_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: invalid config: 1 problem")
    assert info.value.problems[0].startswith("train.batch_size:")
