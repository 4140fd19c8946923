"""The export stage's parity check: the exported model, loaded back with plain transformers, against
base + adapter run by this framework, on held-out examples (or fixed texts when there are none)."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.schema import Config

#: default `export.parity_atol` per export dtype: (floor, fraction of the largest |reference logit|).
#: Low-precision weights shift logits in proportion to their size (bf16 keeps 8 significant bits);
#: measured on the tiny model: bf16 ~5%, fp16 ~1% of max |logit|.
DEFAULT_ATOL = {"float32": (1e-3, 0.0), "float16": (1e-2, 0.03), "bfloat16": (5e-2, 0.10)}
FALLBACK_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Summarize: parameter-efficient fine-tuning trains a few weights.",
    "What is the capital of France?",
    "1, 2, 3, 4, 5",
)


def parity_atol(config: Config, max_abs_logit: float) -> float:
    """`export.parity_atol`, or the dtype's default: max(floor, fraction * the largest |reference logit|)."""
    if config.export.parity_atol is not None:
        return config.export.parity_atol
    floor, fraction = DEFAULT_ATOL[config.export.dtype]
    return max(floor, fraction * max_abs_logit)


def parity_inputs(config: Config, held_out, tokenizer) -> list[list[int]]:
    n = config.export.parity_samples
    limit = min(config.data.max_seq_len, 256)
    column = next(  # preference data: the chosen sequences
        (c for c in ("input_ids", "chosen_input_ids") if held_out is not None and c in held_out.column_names),
        None,
    )
    if column is not None:
        rows = held_out.select(range(min(n, len(held_out))))[column]
        return [list(ids)[:limit] for ids in rows]
    texts = [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(n)]
    return [tokenizer(t)["input_ids"][:limit] for t in texts]


def vision_parity_inputs(config: Config, held_out, processor) -> dict[str, torch.Tensor]:
    """A batch of held-out image rows (pixel values included) made by the training collator."""
    from peft_framework.errors import StageFailed
    from peft_framework.models.vision_batch import VisionCollator

    if held_out is None or "images" not in held_out.column_names or len(held_out) == 0:
        raise StageFailed("export: the parity check of a vision-language model needs prepared image rows")
    rows = [held_out[i] for i in range(min(config.export.parity_samples, len(held_out)))]
    batch = VisionCollator(processor)(rows)
    batch.pop("labels")
    return batch


@torch.no_grad()
def _logits(model, inputs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    from peft_framework.evaluation.runner import attention_mask, pad

    if isinstance(inputs, dict):  # a processor's batch (vision-language models)
        return model(**inputs).logits.float(), inputs["attention_mask"].bool()

    ids = pad(inputs, pad_id)
    mask = attention_mask(inputs)
    return model(input_ids=ids, attention_mask=mask).logits.float(), mask.bool()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _reference_logits(config: Config, adapter_dir: Path, inputs, tokenizer, label_names):
    """Logits of base + adapter as this framework runs them (train.seed seeds a new classification head)."""
    from peft_framework.adapters.checkpoint import load_adapter
    from peft_framework.models.loading import load_base_model

    torch.manual_seed(config.train.seed)
    reference_model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer)
    load_adapter(reference_model, adapter_dir)
    logits = _logits(reference_model.eval(), inputs, _pad_id(tokenizer))
    del reference_model
    gc.collect()
    return logits


def load_check(
    config: Config, export_dir: Path, adapter_dir: Path, inputs, tokenizer, label_names
) -> dict[str, Any]:
    """The unmerged export's own check (it has no merge to compare): loaded back as a user loads it,
    `MultiAdapterModel.from_export` (the base model its base_model.json names, plus the copied adapter),
    against base + adapter from train.output_dir. Not seeded: a classification head the adapter does not
    save (adapter.modules_to_save) comes out different, as it would for the user."""
    from peft_framework.inference import MultiAdapterModel

    reference, mask = _reference_logits(config, adapter_dir, inputs, tokenizer, label_names)
    loaded = MultiAdapterModel.from_export(export_dir, device="cpu")
    exported, _ = _logits(loaded.model, inputs, _pad_id(tokenizer))
    del loaded
    gc.collect()
    if reference.dim() == 3:
        reference, exported = reference[mask], exported[mask]
    diff = (exported - reference).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    finite = math.isfinite(max_diff)
    return {
        "load_check_max_abs_diff": max_diff if finite else None,
        "load_check_max_abs_logit": float(reference.abs().max()) if reference.numel() else 0.0,
        "load_check_samples": len(inputs),
        "_finite": finite,
    }


def parity_check(
    config: Config, export_dir: Path, adapter_dir: Path, inputs, tokenizer, label_names, model_class
) -> dict[str, Any]:
    """Max |logits(exported model, plain transformers) - logits(base + adapter, this framework)|.

    `model_class`: the transformers Auto class a user loads the export with."""
    pad_id = _pad_id(tokenizer)
    reference, mask = _reference_logits(config, adapter_dir, inputs, tokenizer, label_names)
    exported_model = model_class.from_pretrained(str(export_dir)).eval()  # exactly what a user does
    loaded_dtype = str(next(exported_model.parameters()).dtype).removeprefix("torch.")
    exported, _ = _logits(exported_model, inputs, pad_id)
    del exported_model
    gc.collect()
    if reference.dim() == 3:  # causal LM: every real (non-pad) position
        reference, exported = reference[mask], exported[mask]
    diff = (exported - reference).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    return {
        "parity_max_abs_diff": max_diff if math.isfinite(max_diff) else None,
        "parity_max_abs_logit": float(reference.abs().max()) if reference.numel() else 0.0,
        "parity_mean_abs_diff": float(diff.mean()) if diff.numel() else 0.0,
        "parity_top1_agreement": float((exported.argmax(-1) == reference.argmax(-1)).float().mean()),
        "parity_samples": len(inputs),
        "parity_positions": int(reference.shape[0]),
        "parity_loaded_dtype": loaded_dtype,
        "_finite": math.isfinite(max_diff),
    }
