"""The evaluate stage on prepared data and a saved adapter: report, predictions and plot data, with the
numbers checked against an independent computation (HuggingFace peft + transformers' own loss)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from sklearn.metrics import f1_score

from peft_framework.adapters import get_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, DataConfig, EvalConfig, ModelConfig
from peft_framework.data import prepare
from peft_framework.errors import StageFailed
from peft_framework.evaluation import evaluate
from peft_framework.evaluation.runner import clean_text
from peft_framework.models.loading import load_base_model, load_tokenizer

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "bird",
    "tree",
    "house",
    "river",
    "stone",
    "cloud",
    "rain",
    "sun",
    "moon",
    "star",
    "road",
    "book",
    "lamp",
    "door",
]


def write_raw(path: Path, kind: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(40):
            word = WORDS[i % len(WORDS)]
            if kind == "classification":
                label = "positive" if i % 2 else "negative"
                f.write(
                    json.dumps(
                        {"text": f"{word} review number {i}: {'great' if i % 2 else 'awful'}", "label": label}
                    )
                )
            else:
                f.write(
                    json.dumps(
                        {"instruction": f"Repeat the word {i}.", "input": word, "output": f"{word} {word}"}
                    )
                )
            f.write("\n")


def make_project(root: Path, kind: str, **eval_kw) -> Config:
    """Prepared data + a saved LoRA adapter (random trainables, as if trained) + its tokenizer."""
    root.mkdir(parents=True, exist_ok=True)
    write_raw(root / "raw.jsonl", kind)
    task = "sequence_classification" if kind == "classification" else "causal_lm"
    config = Config(
        model=ModelConfig(task=task),
        data=DataConfig(
            source="raw.jsonl", kind=kind, max_seq_len=320, split={"validation": 0.1, "test": 0.25}
        ),
        adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        eval=EvalConfig(max_new_tokens=6, batch_size=4, **eval_kw),
    )
    summary = prepare(config, root)
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(0)
    model = load_base_model(config.model, label_names=summary["label_names"], tokenizer=tokenizer)
    method = get_adapter("lora")
    method.inject(model, config.adapter)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * (0.3 if "lora_B" in name else 0.05))
    out = root / config.train.output_dir
    save_adapter(
        model, method, config.adapter, out, base_model_name_or_path=config.model.name_or_path, task_type=task
    )
    tokenizer.save_pretrained(out)
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def instruction_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_instruction")
    config = make_project(root, "instruction")
    summary = evaluate(config, root)
    return root, config, summary


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_classification")
    config = make_project(root, "classification")
    summary = evaluate(config, root)
    return root, config, summary


def test_report_is_flat_with_base_adapter_and_delta(instruction_run):
    root, config, summary = instruction_run
    report = json.loads((root / config.eval.report_path).read_text())
    assert report == summary["metrics"]
    for metric in ("loss", "perplexity", "exact_match", "rougeL"):
        assert isinstance(report[f"base.{metric}"], float)
        assert report[f"delta.{metric}"] == pytest.approx(
            report[f"adapter.{metric}"] - report[f"base.{metric}"]
        )
    for model in ("base", "adapter"):
        assert report[f"{model}.perplexity"] == pytest.approx(math.exp(report[f"{model}.loss"]))
        assert 0.0 <= report[f"{model}.exact_match"] <= 1.0
    assert all(not isinstance(v, (dict, list)) for v in report.values())
    assert report["delta.loss"] != 0.0  # the adapter changes the model
    from datasets import load_from_disk

    assert report["num_examples"] == len(load_from_disk(str(root / config.data.output_dir))["test"])


def test_losses_match_peft_and_transformers_token_weighted(instruction_run):
    """Independent oracle: HuggingFace peft loads the adapter; transformers computes each example's mean
    loss over its response tokens; weighting by token count must give the report's numbers."""
    import peft
    from datasets import load_from_disk

    from peft_framework.models.tiny import tiny_llama

    root, config, _ = instruction_run
    report = json.loads((root / config.eval.report_path).read_text())
    test = load_from_disk(str(root / config.data.output_dir))["test"]
    base = tiny_llama()
    totals = {}
    with torch.no_grad():
        for name, model in (("base", base), ("adapter", None)):
            if model is None:
                model = peft.PeftModel.from_pretrained(
                    tiny_llama(), str(root / config.train.output_dir)
                ).eval()
            nll, tokens = 0.0, 0
            for ids, labels in zip(test["input_ids"], test["labels"]):
                n = sum(1 for t in labels[1:] if t != -100)
                loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
                nll += float(loss) * n
                tokens += n
            totals[name] = nll / tokens
    assert report["base.loss"] == pytest.approx(totals["base"], abs=1e-5)
    assert report["adapter.loss"] == pytest.approx(totals["adapter"], abs=1e-5)


def test_predictions_file_agrees_with_the_report(instruction_run):
    root, config, summary = instruction_run
    rows = read_jsonl(root / config.eval.predictions_path)
    report = summary["metrics"]
    assert len(rows) == report["num_examples"]
    for model in ("base", "adapter"):
        matches = [float(r[f"{model}_prediction"] == clean_text(r["reference"], "</s>")) for r in rows]
        assert report[f"{model}.exact_match"] == pytest.approx(sum(matches) / len(matches))
        assert [r[f"{model}_exact_match"] for r in rows] == matches
        assert report[f"{model}.rougeL"] == pytest.approx(sum(r[f"{model}_rougeL"] for r in rows) / len(rows))
        weighted = sum(r[f"{model}_loss"] * r["num_tokens"] for r in rows) / sum(
            r["num_tokens"] for r in rows
        )
        assert report[f"{model}.loss"] == pytest.approx(weighted)
    first = rows[0]
    assert first["prompt"].endswith("### Response:\n") and first["reference"]
    assert all(
        len(r["adapter_prediction"]) <= 6 * 4 for r in rows
    )  # max_new_tokens bytes, UTF-8 at most 4 each


def test_generation_uses_the_training_prompt_and_greedy_decoding(instruction_run):
    """The prediction for the first example equals a plain greedy `generate` of its prompt."""
    from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

    root, config, _ = instruction_run
    rows = read_jsonl(root / config.eval.predictions_path)
    tokenizer = tiny_tokenizer()
    ids = tokenizer(rows[0]["prompt"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = tiny_llama().generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=0)
    new = out[0, ids.shape[1] :].tolist()
    new = new[: new.index(2)] if 2 in new else new
    assert rows[0]["base_prediction"] == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_comparison_plot_data(instruction_run):
    root, config, summary = instruction_run
    rows = json.loads((root / config.eval.plots_dir / "eval_comparison.json").read_text())
    report = summary["metrics"]
    assert {r["metric"] for r in rows} == {"loss", "exact_match", "rougeL"}
    for r in rows:
        assert r["value"] == pytest.approx(report[f"{r['model']}.{r['metric']}"])
        assert r["series"] == f"{r['metric']} ({r['model']})"


def test_classification_accuracy_and_macro_f1(classification_run):
    root, config, summary = classification_run
    report = summary["metrics"]
    rows = read_jsonl(root / config.eval.predictions_path)
    assert len(rows) == report["num_examples"] > 0
    for model in ("base", "adapter"):
        correct = [r[f"{model}_prediction"] == r["label"] for r in rows]
        assert report[f"{model}.accuracy"] == pytest.approx(sum(correct) / len(correct))
        f1 = f1_score([r["label"] for r in rows], [r[f"{model}_prediction"] for r in rows], average="macro")
        assert report[f"{model}.f1_macro"] == pytest.approx(f1)
        assert report["delta.accuracy"] == pytest.approx(report["adapter.accuracy"] - report["base.accuracy"])
        confusion = json.loads((root / config.eval.plots_dir / f"confusion_{model}.json").read_text())
        assert confusion == [{"actual": r["label"], "predicted": r[f"{model}_prediction"]} for r in rows]
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    assert "base.perplexity" not in report


def test_max_samples_and_missing_adapter(tmp_path, instruction_run):
    root, config, _ = instruction_run
    limited = config.model_copy(
        update={
            "eval": config.eval.model_copy(
                update={
                    "max_samples": 2,
                    "generate": False,
                    "report_path": "reports/eval_small.json",
                    "predictions_path": "reports/p_small.jsonl",
                    "plots_dir": "reports/plots_small",
                }
            )
        }
    )
    summary = evaluate(limited, root)
    assert summary["metrics"]["num_examples"] == 2
    assert "base.exact_match" not in summary["metrics"]
    assert len(read_jsonl(root / "reports/p_small.jsonl")) == 2

    missing = config.model_copy(
        update={"train": config.train.model_copy(update={"output_dir": str(tmp_path / "none")})}
    )
    with pytest.raises(StageFailed, match="train.output_dir"):
        evaluate(missing, root)
