"""Scoring on image prompts (data.kind vision): the same metrics as text, the processor per batch.

- loss: NLL of the answer tokens, batches built by the training collator (`VisionCollator`), so base,
  adapter and training see the same inputs;
- generation: greedy answers to each test prompt with its images, scored by exact match (the accuracy
  of short answers such as a colour name) and ROUGE-L.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from peft_framework.evaluation import runner
from peft_framework.evaluation.metric_modules import compute
from peft_framework.models.vision_batch import IGNORE_INDEX, VisionCollator, decode_image


@torch.no_grad()
def vision_nll(model, collator: VisionCollator, test, batch_size: int, device) -> list[runner.TokenScores]:
    out: list[runner.TokenScores] = []
    for idx in runner.batches(len(test), batch_size):
        batch = collator([test[i] for i in idx])
        labels = batch.pop("labels").to(device)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logits = model(**batch).logits
        target = labels[:, 1:]
        for row in range(labels.shape[0]):
            nll = F.cross_entropy(
                logits[row, :-1].float(), target[row], ignore_index=IGNORE_INDEX, reduction="sum"
            )
            out.append(runner.TokenScores(float(nll), int((target[row] != IGNORE_INDEX).sum())))
    return out


@torch.no_grad()
def generate_on_images(
    model,
    processor,
    prompts: list[str],
    images: list[list[Any]],
    *,
    max_new_tokens: int,
    batch_size: int,
    device,
) -> list[str]:
    """Greedy answers to `prompts` (rendered with the generation prompt) with their images."""
    tokenizer = processor.tokenizer
    eos_id = tokenizer.eos_token_id
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
    )
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts: list[str] = []
    try:
        for idx in runner.batches(len(prompts), batch_size):
            kwargs = {"images": [images[i] for i in idx]} if any(images[i] for i in idx) else {}
            batch = processor(
                text=[prompts[i] for i in idx],
                padding=True,
                add_special_tokens=False,
                return_tensors="pt",
                **kwargs,
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            output = model.generate(**batch, generation_config=gen_config)
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                if eos_id is not None and eos_id in row:
                    row = row[: row.index(eos_id)]
                texts.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return [runner.clean_text(t, tokenizer.eos_token) for t in texts]


def score_vision(
    model, processor, test, config, device, generate: bool, metrics_dir
) -> tuple[dict, list[dict]]:
    cfg = config.eval
    collator = VisionCollator(processor)
    scores = vision_nll(model, collator, test, cfg.batch_size, device)
    ppl = compute(
        "perplexity", metrics_dir, nll=[s.nll for s in scores], num_tokens=[s.num_tokens for s in scores]
    )
    metrics: dict[str, float] = {"loss": ppl["loss"], "perplexity": ppl["perplexity"]}
    rows: list[dict] = [
        {"num_tokens": s.num_tokens, "loss": (s.nll / s.num_tokens) if s.num_tokens else None} for s in scores
    ]
    if generate:
        images = [[decode_image(img) for img in row] for row in test["images"]]
        predictions = generate_on_images(
            model,
            processor,
            list(test["prompt"]),
            images,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            device=device,
        )
        references = [runner.clean_text(r, processor.tokenizer.eos_token) for r in test["response"]]
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
