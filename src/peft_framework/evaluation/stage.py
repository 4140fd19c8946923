"""The evaluate stage: the base model and base + adapter scored on the test split by the same code.

Outputs (all written atomically):
- `eval.report_path` (reports/eval.json): flat keys `base.<metric>`, `adapter.<metric>`, `delta.<metric>`
  (adapter minus base) plus `num_examples`: numbers only, for `dvc metrics show` / `dvc exp show`.
- `eval.predictions_path` (jsonl): one line per test example with both models' outputs and `adapter_sha256`.
- `eval.plots_dir`: `eval_comparison.json`, rows {metric, model, value, series} for a DVC bar plot
  (`template: bar_horizontal, x: value, y: series`); classification adds `confusion_base.json` and
  `confusion_adapter.json`, rows {actual, predicted} for DVC's `confusion` template; and `manifest.json`
  with `adapter_sha256` and `predictions_sha256`, which tie this run's outputs to the adapter they score
  and to the predictions file (a run killed between two writes leaves a visibly mismatched pair).

Preference data (data.kind preference / unpaired_preference): see evaluation/preference.py. Prompt data
(data.kind prompt, GRPO): completions of the test prompts scored by train.rewards, see evaluation/prompt.py.
Metrics: causal LM loss and perplexity over the labelled (response) tokens, token-weighted; for
instruction/chat data with `eval.generate`, greedy generation from `prompt` scored against `response`
with exact match and ROUGE-L; for classification accuracy and macro-F1 (and the mean cross-entropy).
The base model of a classification run has an untrained head (initialised from `train.seed`): its
numbers are the chance-level reference the adapter (which carries its trained head) is compared with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.schema import Config
from peft_framework.data.preference import PREFERENCE_KINDS
from peft_framework.errors import DataError, StageFailed
from peft_framework.evaluation import runner
from peft_framework.evaluation.metric_modules import compute
from peft_framework.io import atomic_dir, check_output_dir, file_sha256, write_json_atomic, write_text_atomic
from peft_framework.locking import locked_stage
from peft_framework.models.saved_tokenizer import adapter_tokenizer
from peft_framework.paths import resolve
from peft_framework.provenance import read_manifest, write_manifest
from peft_framework.runtime import pick_device

log = logging.getLogger(__name__)

MODELS = ("base", "adapter")
COMPARISON_PLOT = "eval_comparison.json"
#: metrics left out of the comparison plot (their scale dwarfs the others'); still in the report
NOT_PLOTTED = ("perplexity",)


def load_test_split(config: Config, root: str | os.PathLike[str]):
    """The prepared test split (first `eval.max_samples` rows), the label names (if any) and the manifest."""
    from datasets import load_from_disk

    data_dir = resolve(root, config.data.output_dir)
    if not data_dir.is_dir():
        raise DataError(f"data.output_dir: {data_dir} does not exist; run the prepare stage first")
    try:
        dataset = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"data.output_dir: {data_dir} is not a prepared dataset ({exc}); run prepare again"
        ) from exc
    if "test" not in dataset or len(dataset["test"]) == 0:
        raise DataError(
            f"data.split.test: the test split in {data_dir} is empty; allowed: a test fraction that leaves at least "
            "one row (raise data.split.test or add data)"
        )
    test = dataset["test"]
    if config.eval.max_samples is not None and len(test) > config.eval.max_samples:
        test = test.select(range(config.eval.max_samples))
    manifest = read_manifest(data_dir)
    label_names = manifest.get("label_names")
    if label_names is None and hasattr(test.features.get("labels"), "names"):
        label_names = list(test.features["labels"].names)
    return test, label_names, manifest


# ------------------------------------------------------------------------------------------------ scoring
def prompt_add_special_tokens(config: Config, manifest: dict[str, Any]) -> bool:
    """Tokenize prompts as data preparation did: chat-template prompts already hold their special tokens."""
    recorded = manifest.get("format", {}).get("prompt_add_special_tokens")
    if recorded is not None:
        return bool(recorded)
    from peft_framework.data.formatting import resolve_template

    return resolve_template(config.data) != "chat_template"


def score_causal_lm(
    model,
    tokenizer,
    test,
    config: Config,
    device,
    generate: bool,
    metrics_dir,
    add_special_tokens: bool = True,
) -> tuple[dict, list[dict]]:
    cfg = config.eval
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = runner.lm_nll(
        model,
        test["input_ids"],
        test["labels"],
        pad_token_id=pad_id,
        batch_size=cfg.batch_size,
        device=device,
    )
    predictions = None
    if generate:
        predictions = runner.generate(
            model,
            tokenizer,
            test["prompt"],
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            add_special_tokens=add_special_tokens,
            max_prompt_tokens=config.data.max_seq_len,
            device=device,
        )
    return lm_report(scores, predictions, test["response"], tokenizer.eos_token, metrics_dir)


def lm_report(
    scores: list[runner.TokenScores],
    predictions: list[str] | None,
    responses,
    eos_token: str | None,
    metrics_dir,
) -> tuple[dict, list[dict]]:
    """Metrics and per-example rows of a generative model (text or image prompts alike): loss and
    perplexity of the answer tokens; with `predictions`, exact match and ROUGE-L against the responses."""
    if sum(s.num_tokens for s in scores) == 0:
        raise DataError("data: the test split has no labelled tokens to score (every label is -100)")
    ppl = compute(
        "perplexity", metrics_dir, nll=[s.nll for s in scores], num_tokens=[s.num_tokens for s in scores]
    )
    metrics = {"loss": ppl["loss"], "perplexity": ppl["perplexity"]}
    rows = [
        {"num_tokens": s.num_tokens, "loss": (s.nll / s.num_tokens) if s.num_tokens else None} for s in scores
    ]
    if predictions is not None:
        references = [runner.clean_text(r, eos_token) for r in responses]
        metrics["exact_match"] = compute(
            "exact_match", metrics_dir, predictions=predictions, references=references
        )["exact_match"]
        rouge = compute(
            "rouge",
            metrics_dir,
            predictions=predictions,
            references=references,
            rouge_types=["rougeL"],
            use_aggregator=False,
        )["rougeL"]
        metrics["rougeL"] = statistics.fmean(rouge)
        for row, prediction, reference, r in zip(rows, predictions, references, rouge):
            row.update(prediction=prediction, exact_match=float(prediction == reference), rougeL=r)
    return metrics, rows


def score_classification(
    model, tokenizer, test, config: Config, device, label_names, metrics_dir
) -> tuple[dict, list[dict]]:
    cfg = config.eval
    pad_id = model.config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = runner.classify(
        model,
        test["input_ids"],
        test["labels"],
        pad_token_id=pad_id,
        batch_size=cfg.batch_size,
        device=device,
    )
    predicted = [r.predicted for r in results]
    references = list(test["labels"])
    metrics = {
        "accuracy": compute("accuracy", metrics_dir, predictions=predicted, references=references)[
            "accuracy"
        ],
        "f1_macro": compute("f1", metrics_dir, predictions=predicted, references=references, average="macro")[
            "f1"
        ],
        "loss": statistics.fmean(r.loss for r in results),
    }

    def name(i: int) -> str | int:
        return label_names[i] if label_names and 0 <= i < len(label_names) else i

    rows = [{"prediction": name(r.predicted), "loss": r.loss} for r in results]
    return metrics, rows


def score(
    model,
    tokenizer,
    test,
    config: Config,
    device,
    label_names,
    generate: bool,
    metrics_dir: Path | None = None,
    add_special_tokens: bool = True,
) -> tuple[dict, list[dict]]:
    """The one scoring routine both models go through."""
    model.eval()
    if config.model.task == "image_text_to_text":  # tokenizer: the processor, images per batch
        from peft_framework.evaluation.vision import score_vision

        return score_vision(model, tokenizer, test, config, device, generate, metrics_dir)
    if config.data.kind == "prompt":
        from peft_framework.evaluation.prompt import score_prompts

        return score_prompts(model, tokenizer, test, config, device)
    if config.data.kind in PREFERENCE_KINDS:
        from peft_framework.evaluation.preference import score_preference

        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return score_preference(model, test, config, device, pad_id)
    if config.model.task == "sequence_classification":
        return score_classification(model, tokenizer, test, config, device, label_names, metrics_dir)
    return score_causal_lm(model, tokenizer, test, config, device, generate, metrics_dir, add_special_tokens)


# ------------------------------------------------------------------------------------------------ outputs
def flat_report(results: dict[str, dict[str, float]], num_examples: int) -> dict[str, float | int]:
    report: dict[str, float | int] = {"num_examples": num_examples}
    for model in MODELS:
        for key, value in results[model].items():
            report[f"{model}.{key}"] = value
    for key in results["adapter"]:
        if key in results["base"]:
            report[f"delta.{key}"] = results["adapter"][key] - results["base"][key]
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in report.items()}


def comparison_rows(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for key in results["base"]:
        if key in NOT_PLOTTED:
            continue
        for model in MODELS:
            value = results[model].get(key)
            if value is not None and math.isfinite(value):
                rows.append({"metric": key, "model": model, "value": value, "series": f"{key} ({model})"})
    return rows


def prediction_rows(test, config: Config, per_model: dict[str, list[dict]], label_names) -> list[dict]:
    classification = config.model.task == "sequence_classification"
    lines = []
    for i in range(len(test)):
        row: dict[str, Any] = {"index": i}
        if classification:
            if "text" in test.column_names:
                row["text"] = test[i]["text"]
            label = int(test[i]["labels"])
            row["label"] = label_names[label] if label_names else label
        elif config.data.kind == "prompt":  # the prompt and the columns the rewards read
            row.update({k: test[i][k] for k in test.column_names if k not in ("prompt_ids", "source")})
        elif config.data.kind in PREFERENCE_KINDS:
            row.update(
                {
                    k: test[i][k]
                    for k in ("prompt", "chosen", "rejected", "completion")
                    if k in test.column_names
                }
            )
        elif "prompt" in test.column_names:
            row["prompt"] = test[i]["prompt"]
            row["reference"] = test[i]["response"]
            if "images" in test.column_names:  # which images the prompt showed (content hashes)
                row["images"] = [img["sha256"] for img in test[i]["images"]]
        for model in MODELS:
            for key, value in per_model[model][i].items():
                if key == "num_tokens":
                    row[key] = value
                else:
                    row[f"{model}_{key}"] = value
        lines.append(row)
    return lines


# ------------------------------------------------------------------------------------------------- stage
@locked_stage("evaluate")
def evaluate(config: Config, root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Score the base model and base + the trained adapter on the test split; write the report,
    per-example predictions and plot data. Returns a summary (paths, hashes, the flat metrics)."""
    from peft_framework.adapters.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_adapter
    from peft_framework.models.loading import load_base_model

    cfg = config.eval
    adapter_dir = resolve(root, config.train.output_dir)
    if not (adapter_dir / CONFIG_NAME).is_file():
        raise StageFailed(
            f"train.output_dir: {adapter_dir} holds no trained adapter ({CONFIG_NAME} missing); run the train stage first"
        )
    check_output_dir(resolve(root, cfg.plots_dir), "eval.plots_dir", root, [adapter_dir])
    test, label_names, manifest = load_test_split(config, root)
    classification = config.model.task == "sequence_classification"
    columns = set(test.column_names)
    generate = (
        cfg.generate
        and not classification
        and config.data.kind in ("instruction", "chat", "vision")
        and {"prompt", "response"} <= columns
    )
    if cfg.generate and not classification and config.data.kind in ("instruction", "chat") and not generate:
        log.warning(
            "eval.generate: the test split has no prompt/response columns; generation metrics skipped"
        )

    device = pick_device(cfg.device, key="eval.device")
    metrics_dir = resolve(root, cfg.metrics_dir) if cfg.metrics_dir else None
    tokenizer = adapter_tokenizer(config.model, adapter_dir)
    if config.model.task == "image_text_to_text":  # scored with the processor (evaluation/vision.py)
        from peft_framework.models.vlm import load_processor

        processor = load_processor(config.model)
        processor.tokenizer = tokenizer
        tokenizer = processor
    torch.manual_seed(config.train.seed)  # a new classification head is initialised from the global RNG
    model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer).to(device)

    results: dict[str, dict[str, float]] = {}
    per_model: dict[str, list[dict]] = {}
    log.info("evaluating the base model on %d test examples", len(test))
    args = (
        tokenizer,
        test,
        config,
        device,
        label_names,
        generate,
        metrics_dir,
        prompt_add_special_tokens(config, manifest),
    )
    results["base"], per_model["base"] = score(model, *args)
    load_adapter(model, adapter_dir)
    model.to(device)
    log.info("evaluating base + adapter (%s)", adapter_dir)
    results["adapter"], per_model["adapter"] = score(model, *args)

    if config.data.kind in PREFERENCE_KINDS:  # margins against the base model (the adapter-off reference)
        from peft_framework.evaluation.preference import add_reward_margins

        add_reward_margins(results, per_model, config.data.kind, config.train.beta)
    report = flat_report(results, len(test))
    predictions = prediction_rows(test, config, per_model, label_names)

    # the plots' manifest and every prediction row name the adapter they score, and the manifest the
    # predictions' hash: a run killed between the writes leaves a pair that visibly does not belong together
    adapter_sha = file_sha256(adapter_dir / WEIGHTS_NAME)  # the weights' hash, as the train manifest has it
    text = "".join(
        json.dumps({**row, "adapter_sha256": adapter_sha}, ensure_ascii=False, sort_keys=True) + "\n"
        for row in predictions
    )
    plots_dir = resolve(root, cfg.plots_dir)
    with atomic_dir(plots_dir, key="eval.plots_dir", root=root, inputs=[adapter_dir]) as tmp:
        write_json_atomic(tmp / COMPARISON_PLOT, comparison_rows(results))
        if classification:
            for model_name in MODELS:
                confusion = [
                    {"actual": row["label"], "predicted": row[f"{model_name}_prediction"]}
                    for row in predictions
                ]
                write_json_atomic(tmp / f"confusion_{model_name}.json", confusion)
        write_manifest(
            tmp,
            {
                "adapter_dir": config.train.output_dir,
                "adapter_sha256": adapter_sha,
                "predictions_path": cfg.predictions_path,
                "predictions_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "num_examples": len(test),
            },
        )
    predictions_path = resolve(root, cfg.predictions_path)
    write_text_atomic(predictions_path, text)
    report_path = write_json_atomic(resolve(root, cfg.report_path), report)
    log.info("eval report: %s", ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float)))
    return {
        "report_path": str(report_path),
        "predictions_path": str(predictions_path),
        "plots_dir": str(plots_dir),
        "comparison_plot": str(plots_dir / COMPARISON_PLOT),
        "adapter_sha256": adapter_sha,
        "num_examples": len(test),
        "generated": generate,
        "metrics": report,
    }
