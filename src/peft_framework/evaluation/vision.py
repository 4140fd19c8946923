"""Scoring on image prompts (data.kind vision): the same metrics and report as text (`stage.lm_report`), only
the batches differ, built by the processor:

- loss: NLL of the answer tokens, batches built by the training collator (`VisionCollator`), so base,
  adapter and training see the same inputs;
- generation: greedy answers to each test prompt with its images, scored by exact match (the accuracy
  of short answers such as a colour name) and ROUGE-L.
"""

from __future__ import annotations

from typing import Any

import torch

from peft_framework.evaluation import runner
from peft_framework.models.vision_batch import VisionCollator, decode_image


@torch.no_grad()
def vision_nll(model, collator: VisionCollator, test, batch_size: int, device) -> list[runner.TokenScores]:
    out: list[runner.TokenScores] = []
    for idx in runner.batches(len(test), batch_size):
        batch = collator([test[i] for i in idx])
        labels = batch.pop("labels").to(device)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out.extend(runner.row_nll(model(**batch).logits, labels))
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
    gen_config = runner.greedy_config(tokenizer, max_new_tokens)
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
            texts.extend(runner.decode_new(tokenizer, output[:, batch["input_ids"].shape[1] :]))
    finally:
        tokenizer.padding_side = side
    return texts


def score_vision(
    model, processor, test, config, device, generate: bool, metrics_dir
) -> tuple[dict, list[dict]]:
    from peft_framework.evaluation.stage import lm_report

    cfg = config.eval
    scores = vision_nll(model, VisionCollator(processor), test, cfg.batch_size, device)
    predictions = None
    if generate:
        predictions = generate_on_images(
            model,
            processor,
            list(test["prompt"]),
            [[decode_image(img) for img in row] for row in test["images"]],
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
            device=device,
        )
    return lm_report(scores, predictions, test["response"], processor.tokenizer.eos_token, metrics_dir)
