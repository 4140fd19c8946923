"""The shipped `evaluate` metric modules and the scoring helpers give hand-computed values."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from peft_framework.errors import ConfigError
from peft_framework.evaluation import runner
from peft_framework.evaluation.metric_modules import SHIPPED, compute, load_metric, metric_path
from peft_framework.evaluation.stage import comparison_rows, flat_report
from peft_framework.models.tiny import tiny_llama, tiny_tokenizer


def test_every_shipped_module_loads_by_path_without_the_hub():
    for name in SHIPPED:
        assert metric_path(name).is_relative_to(metric_path("accuracy").parent)  # inside the package
        assert load_metric(name).name == name  # evaluate names a module after its script


def test_unknown_metric_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="eval.metrics_dir.*'bleu'"):
        metric_path("bleu")


def test_user_metrics_dir_overrides_a_shipped_module(tmp_path):
    custom = tmp_path / "accuracy"
    custom.mkdir()
    source = (metric_path("accuracy") / "accuracy.py").read_text()
    # the same module, but reporting the error rate: proves the user's copy is the one loaded
    custom.joinpath("accuracy.py").write_text(
        source.replace('"accuracy": float(', '"accuracy": 1.0 - float(')
    )
    assert (
        compute("accuracy", tmp_path, predictions=[1, 1, 0, 0], references=[1, 0, 0, 0])["accuracy"] == 0.25
    )
    assert (
        compute("f1", tmp_path, predictions=[1, 0], references=[1, 0])["f1"] == 1.0
    )  # falls back to shipped


def test_accuracy():
    # 4 of 5 correct
    assert compute("accuracy", predictions=[0, 1, 1, 0, 2], references=[0, 1, 0, 0, 2])[
        "accuracy"
    ] == pytest.approx(0.8)


def test_macro_f1():
    # class 0: P=1 R=1 F=1; class 1: P=1/2 R=1 F=2/3; class 2: P=1 R=1/2 F=2/3 -> mean 7/9
    result = compute("f1", predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro")
    assert result["f1"] == pytest.approx(7 / 9)
    # binary (positive class 1): P = 1/2, R = 1 -> F = 2/3
    assert compute("f1", predictions=[1, 1, 0], references=[1, 0, 0])["f1"] == pytest.approx(2 / 3)


def test_exact_match():
    predictions, references = ["Paris", "rome", "x"], ["Paris", "Rome", "y"]
    assert compute("exact_match", predictions=predictions, references=references)[
        "exact_match"
    ] == pytest.approx(1 / 3)
    assert compute("exact_match", predictions=predictions, references=references, ignore_case=True)[
        "exact_match"
    ] == pytest.approx(2 / 3)
    assert compute("exact_match", predictions=[], references=[])["exact_match"] == 0.0


def test_rouge_l():
    # "the cat sat" vs "the cat sat down": LCS 3, P = 3/3, R = 3/4 -> F = 6/7
    # "a b c d" vs "a c e": LCS 2 ("a c"), P = 2/4, R = 2/3 -> F = 4/7
    result = compute(
        "rouge",
        predictions=["the cat sat", "a b c d"],
        references=["the cat sat down", "a c e"],
        use_aggregator=False,
    )
    assert result["rougeL"] == pytest.approx([6 / 7, 4 / 7])
    mean = compute("rouge", predictions=["the cat sat", "a b c d"], references=["the cat sat down", "a c e"])
    assert mean["rougeL"] == pytest.approx(5 / 7)


def test_perplexity_is_token_weighted():
    # 4 tokens in all, total NLL 4 -> loss 1 (the mean of per-example losses would be (3 + 1/3) / 2)
    result = compute("perplexity", nll=[3.0, 1.0], num_tokens=[1, 3])
    assert result["loss"] == pytest.approx(1.0)
    assert result["perplexity"] == pytest.approx(math.e)
    assert result["num_tokens"] == 4
    with pytest.raises(ValueError, match="no scored tokens"):
        compute("perplexity", nll=[0.0], num_tokens=[0])


def test_clean_text_cuts_at_eos_and_strips():
    assert runner.clean_text("  Paris</s> junk", "</s>") == "Paris"
    assert runner.clean_text("\nanswer \n", "</s>") == "answer"
    assert runner.clean_text("no eos", None) == "no eos"


def test_lm_nll_matches_transformers_loss_on_response_tokens_only():
    torch.manual_seed(0)
    model = tiny_llama()
    a = [1, 40, 41, 42, 43, 44, 45, 2]
    b = [1, 50, 51, 52, 2]
    labels_a = [-100, -100, -100, -100, 43, 44, 45, 2]  # prompt masked
    labels_b = [-100, -100, 51, 52, 2]
    scores = runner.lm_nll(model, [a, b], [labels_a, labels_b], pad_token_id=0, batch_size=2)
    assert [s.num_tokens for s in scores] == [4, 3]
    with torch.no_grad():
        for ids, labels, score in ((a, labels_a, scores[0]), (b, labels_b, scores[1])):
            hf = model(
                input_ids=torch.tensor([ids]), labels=torch.tensor([labels])
            ).loss  # mean over its tokens
            assert score.nll / score.num_tokens == pytest.approx(float(hf), abs=1e-5)


def test_batched_padded_generation_equals_one_by_one():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    prompts = ["Hello there, how are you?", "x", "The capital of France is"]
    together = runner.generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    alone = [runner.generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert together == alone
    assert all(isinstance(t, str) for t in together)


def test_classify_pads_right_and_returns_loss():
    torch.manual_seed(0)
    model = tiny_llama(task="sequence_classification", num_labels=3)
    rows = [[1, 60, 61, 62], [1, 70]]
    results = runner.classify(model, rows, [2, 0], pad_token_id=0, batch_size=2)
    with torch.no_grad():
        for ids, label, result in zip(rows, [2, 0], results):
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            assert result.predicted == int(logits.argmax())
            assert result.loss == pytest.approx(
                float(torch.nn.functional.cross_entropy(logits, torch.tensor(label))), abs=1e-5
            )


def test_flat_report_has_base_adapter_delta_keys():
    results = {
        "base": {"loss": 2.0, "perplexity": math.exp(2.0)},
        "adapter": {"loss": 1.5, "perplexity": math.exp(1.5)},
    }
    report = flat_report(results, num_examples=3)
    assert report["num_examples"] == 3
    assert report["base.loss"] == 2.0 and report["adapter.loss"] == 1.5
    assert report["delta.loss"] == pytest.approx(-0.5)
    assert report["delta.perplexity"] == pytest.approx(math.exp(1.5) - math.exp(2.0))
    assert all("." in k for k in report if k != "num_examples")  # flat: no nested objects for dvc
    rows = comparison_rows(results)
    assert {(r["metric"], r["model"]) for r in rows} == {
        ("loss", "base"),
        ("loss", "adapter"),
    }  # no perplexity
    assert {r["series"] for r in rows} == {"loss (base)", "loss (adapter)"}
