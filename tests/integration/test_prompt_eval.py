"""Evaluate on prompt data (GRPO): the real prepare and evaluate stages on the tiny Llama and a saved LoRA
adapter. The numbers are checked against an independent computation: each model's greedy completion of each
test prompt made one prompt at a time with transformers' `generate` (no padding), scored by hand."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, DataConfig, EvalConfig
from peft_framework.config.train_schema import TrainConfig
from peft_framework.data import prepare
from peft_framework.evaluation import evaluate
from peft_framework.models.loading import load_base_model, load_tokenizer
from peft_framework.rewards.builtin import normalize

MAX_COMPLETION = 8
WORDS = ["cat", "dog", "sun", "sky", "red", "box", "pen", "cup", "hat", "owl"]


def _config() -> Config:
    return Config(
        data=DataConfig(
            source="raw.jsonl",
            kind="prompt",
            max_seq_len=48,
            split={"validation": 0.0, "test": 0.4, "seed": 3},
        ),
        adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        train=TrainConfig(
            objective="grpo",
            grpo={"max_completion_length": MAX_COMPLETION},
            rewards=[
                {"name": "exact_match", "column": "answer"},
                {"name": "length", "max": 4, "penalty": 0.25, "weight": 0.1},
            ],
        ),
        eval=EvalConfig(batch_size=4, pass_threshold=0.5),
    )


def _greedy(model, tokenizer, prompt: str) -> tuple[str, int]:
    """The completion text and its length in tokens (up to and including EOS), unpadded."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=MAX_COMPLETION,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.size(1) :].tolist()
    if tokenizer.eos_token_id in out:
        out = out[: out.index(tokenizer.eos_token_id) + 1]
    return tokenizer.decode(out, skip_special_tokens=True), len(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt_eval")
    config = _config()
    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model, tokenizer=tokenizer).eval()
    # every other row's answer is what the base model answers (greedy), so base exact_match is known exactly
    rows = []
    for i, word in enumerate(WORDS * 3):
        prompt = f"Say the word {word} {i}"
        answer = _greedy(base, tokenizer, prompt + "\n")[0] if i % 2 == 0 else f"never-{word}"
        rows.append({"prompt": prompt, "answer": answer, "i": i})
    (root / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(config, root)

    method = get_adapter("lora")
    method.inject(base, config.adapter)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * (0.5 if "lora_B" in name else 0.05))
    out = root / config.train.output_dir
    save_adapter(
        base,
        method,
        config.adapter,
        out,
        base_model_name_or_path=config.model.name_or_path,
        task_type="causal_lm",
    )
    tokenizer.save_pretrained(out)
    summary = evaluate(config, root)
    return root, config, rows, summary


def _expected(model, tokenizer, test_rows: list[dict]) -> dict[str, float]:
    exact, lengths, totals = [], [], []
    for row in test_rows:
        text, n_tokens = _greedy(model, tokenizer, row["prompt"] + "\n")
        match = float(normalize(text) == normalize(row["answer"]))
        penalty = -min(1.0, 0.25 * max(0, len(text) - 4))
        exact.append(match)
        lengths.append(n_tokens)
        totals.append(match + 0.1 * penalty)
    n = len(test_rows)
    return {
        "reward_exact_match": sum(exact) / n,
        "reward": sum(totals) / n,
        "pass_rate": sum(t >= 0.5 for t in totals) / n,
        "completion_length": sum(lengths) / n,
    }


def test_rewards_of_base_and_adapter_match_an_independent_computation(run) -> None:
    root, config, rows, summary = run
    report = json.loads((root / config.eval.report_path).read_text())
    assert report == summary["metrics"]
    predictions = [
        json.loads(line) for line in (root / config.eval.predictions_path).read_text().splitlines()
    ]
    test_rows = [rows[p["i"]] for p in predictions]
    assert report["num_examples"] == len(test_rows) >= 6

    tokenizer = load_tokenizer(config.model)
    base = load_base_model(config.model, tokenizer=tokenizer).eval()
    expected_base = _expected(base, tokenizer, test_rows)
    # half the rows hold the base model's own answer: its exact match is that share, and no lower
    assert expected_base["reward_exact_match"] == sum(r["i"] % 2 == 0 for r in test_rows) / len(test_rows)
    load_adapter(base, root / config.train.output_dir)
    expected_adapter = _expected(base.eval(), tokenizer, test_rows)
    assert expected_adapter != expected_base  # the adapter changes the answers
    for model, expected in (("base", expected_base), ("adapter", expected_adapter)):
        for metric, value in expected.items():
            assert report[f"{model}.{metric}"] == pytest.approx(value, abs=1e-6), (model, metric)
        assert report[f"{model}.reward_failures"] == 0
        assert 0 <= report[f"{model}.completion_length"] <= MAX_COMPLETION
    assert report["delta.reward"] == pytest.approx(report["adapter.reward"] - report["base.reward"])
    row = predictions[0]
    assert {
        "prompt",
        "answer",
        "base_completion",
        "adapter_completion",
        "base_rewards",
        "adapter_passed",
    } <= set(row)
    assert set(row["base_rewards"]) == {"exact_match", "length"}


def test_a_failing_reward_stops_evaluate_with_an_error_naming_it(run, capsys) -> None:
    """Through the CLI: numeric_match on answers that hold no number fails row by row; past
    train.max_reward_failures (0) the stage stops with `error:` naming the function and the row, exit 2."""
    import yaml

    from peft_framework import cli

    root, config, _, _ = run
    (root / "failing.yaml").write_text(yaml.safe_dump(config.to_dict()))
    code = cli.main(
        [
            "evaluate",
            str(root / "failing.yaml"),
            "--root",
            str(root),
            "train.rewards=[{name: numeric_match, column: answer}]",
            "eval.report_path=reports/failing.json",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: train.max_reward_failures: ") and "more than the 0 allowed" in err
    assert "reward 'numeric_match' failed on row raw.jsonl:" in err and "which contains no number" in err
    assert "Traceback" not in err
    assert not (root / "reports" / "failing.json").exists()
