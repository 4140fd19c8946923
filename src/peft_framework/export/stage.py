"""The export stage: the trained adapter merged into the base weights, as a plain transformers model dir.

`export.output_dir` gets safetensors shards (+ index), config.json (architecture, dtype, labels),
the tokenizer with its chat template, and for causal LMs a generation_config.json with EOS and PAD, so
`AutoModelForCausalLM.from_pretrained(dir)` (or ...ForSequenceClassification) loads it with no
framework code. The merge streams the base checkpoint shard by shard (see `export.merge`); its time and
peak memory growth go into `export.report_path`. A parity check compares the exported model, loaded
back with plain transformers, with base + adapter on held-out examples: above `export.parity_atol` the
stage fails and the output directory is not written.

Adapter types that cannot be merged (bottleneck) or `export.merge: false`: the adapter directory is
exported with `base_model.json` naming the base model, and the report and the log say so.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from peft_framework.config.schema import Config, QuantizationConfig
from peft_framework.errors import StageFailed, UserError
from peft_framework.export.memory import PeakRSS
from peft_framework.export.merge import Adapter, open_checkpoint, stream_merge, warm_up
from peft_framework.export.parity import load_check, parity_atol, parity_check, parity_inputs
from peft_framework.io import (
    atomic_dir,
    check_output_dir,
    numbers_only,
    path_sha256,
    temp_prefix,
    write_json_atomic,
)
from peft_framework.locking import locked_stage
from peft_framework.models.quantization import unquantized
from peft_framework.models.saved_tokenizer import adapter_tokenizer
from peft_framework.paths import resolve
from peft_framework.provenance import read_manifest, write_manifest

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE_REFERENCE = "base_model.json"
EXPORT_MANIFEST = "peft_framework_export.json"
EXPORT_REPORT = "export_report.json"
"""The full export report (paths, hashes, dtypes, tensor lists, timings) inside `export.output_dir`;
`export.report_path` holds its numbers only (`export_metrics`). Its `output_sha256` is the hash of the
directory before this file was added."""
EXPORT_METRICS = (
    "merged",
    "parity_passed",
    "parity_max_abs_diff",
    "parity_mean_abs_diff",
    "parity_top1_agreement",
    "parity_atol",
    "load_check_passed",
    "load_check_max_abs_diff",
    "load_check_atol",
    "adapter_bytes",
    "model_bytes",
    "num_shards",
)


# ------------------------------------------------------------------------------------------------ inputs
def prepared_data(config: Config, root: Path) -> tuple[Any, list[str] | None]:
    """(held-out split or None, label names or None) from the prepared data, when it exists."""
    data_dir = resolve(root, config.data.output_dir)
    label_names = read_manifest(data_dir).get("label_names")
    if not data_dir.is_dir():
        return None, label_names
    from datasets import load_from_disk

    try:
        dataset = load_from_disk(str(data_dir))
    except (FileNotFoundError, ValueError):
        return None, label_names
    for split in ("test", "validation"):
        if split in dataset and len(dataset[split]) > 0:
            return dataset[split], label_names
    return None, label_names


def base_checkpoint_dir(config: Config, scratch: Path, label_names, tokenizer) -> Path:
    """A local directory with the base model's safetensors checkpoint (built-in models are saved first)."""
    from peft_framework.models.loading import is_builtin, load_base_model

    name = config.model.name_or_path
    # pickle-only weights, opted in (model.allow_pickle_weights): loaded as train/evaluate load them, then
    # saved as safetensors for the shard-by-shard merge
    pickle_only = (
        config.model.allow_pickle_weights
        and Path(name).is_dir()
        and not any(Path(name).glob("*.safetensors"))
    )
    if is_builtin(name) or pickle_only:
        torch.manual_seed(config.train.seed)  # same seed as training/evaluation for a new head
        model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer)
        model.save_pretrained(str(scratch), max_shard_size=config.export.max_shard_size)
        del model
        gc.collect()
        return scratch
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name, revision=config.model.revision, allow_patterns=["*.json", "*.safetensors"]
            )
        )
    except Exception as exc:  # network errors, missing repo, offline without cache
        raise UserError(
            f"model.name_or_path: cannot get the checkpoint of {name!r} to merge into ({exc})"
        ) from exc


def export_hf_config(config: Config, base_dir: Path, label_names, tokenizer, dtype: torch.dtype):
    """The base config.json, made to describe the exported model (task head, labels, dtype, pad id)."""
    from transformers import AutoConfig

    from peft_framework.models.loading import resolve_num_labels

    hf_config = AutoConfig.from_pretrained(str(base_dir), trust_remote_code=config.model.trust_remote_code)
    if config.model.task == "sequence_classification":
        try:
            hf_config.num_labels = resolve_num_labels(config.model, label_names=label_names)
        except UserError:
            pass  # no label info anywhere: keep the checkpoint's own num_labels
        if label_names and len(label_names) == hf_config.num_labels:
            hf_config.id2label = dict(enumerate(label_names))
            hf_config.label2id = {label: i for i, label in enumerate(label_names)}
    if getattr(hf_config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    text_config = hf_config.get_text_config()
    if config.model.add_tokens and len(tokenizer) > text_config.vocab_size:  # embeddings grown for them
        text_config.vocab_size = len(tokenizer)
    hf_config.dtype = dtype
    return hf_config


def auto_class(config: Config):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if config.model.task == "image_text_to_text":
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    return (
        AutoModelForSequenceClassification
        if config.model.task == "sequence_classification"
        else AutoModelForCausalLM
    )


def write_generation_config(base_dir: Path, hf_config, tokenizer, out_dir: Path) -> dict[str, Any]:
    """generation_config.json with the tokenizer's EOS (added to the base's) and a PAD token."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(base_dir))
    except OSError:
        gen = GenerationConfig.from_model_config(hf_config)
    eos = gen.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else (eos_ids or None)
    if gen.pad_token_id is None:
        gen.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [None])[0]
        )
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id
    gen.save_pretrained(str(out_dir))
    return {
        "eos_token_id": gen.eos_token_id,
        "pad_token_id": gen.pad_token_id,
        "bos_token_id": gen.bos_token_id,
    }


# ------------------------------------------------------------------------------------------------- stage
def trained_quantization(config: Config, adapter_dir: Path) -> dict[str, Any] | None:
    """How the base was quantized when the adapter was trained (its manifest; else `model.quantization`)."""
    from peft_framework.models.quantization import quantization_summary

    model_config = config.model
    recorded = read_manifest(adapter_dir).get("config", {}).get("model", {})
    if "quantization" in recorded:
        model_config = model_config.model_copy(
            update={"quantization": QuantizationConfig.model_validate(recorded["quantization"] or {})}
        )
    return quantization_summary(model_config)


@locked_stage("export")
def export(config: Config, root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Merge the trained adapter into the base model and export it (or export the adapter when it cannot
    be merged). Writes `export.output_dir` and `export.report_path`; returns a summary."""
    from peft_framework.adapters.checkpoint import CONFIG_NAME

    started = time.perf_counter()
    root = Path(root)
    cfg = config.export
    adapter_dir = resolve(root, config.train.output_dir)
    out_dir = resolve(root, cfg.output_dir)
    report_path = resolve(root, cfg.report_path)
    if not (adapter_dir / CONFIG_NAME).is_file():
        raise StageFailed(
            f"train.output_dir: {adapter_dir} holds no trained adapter ({CONFIG_NAME} missing); run the train stage first"
        )
    check_output_dir(out_dir, "export.output_dir", root, [adapter_dir, resolve(root, config.data.output_dir)])
    adapter = Adapter.read(adapter_dir)
    method = adapter.method
    tokenizer = adapter_tokenizer(config.model, adapter_dir)
    held_out, label_names = prepared_data(config, root)

    trained_on = trained_quantization(config, adapter_dir)
    if trained_on is not None:
        # QLoRA export: merge into (and compare with) the base loaded WITHOUT quantization
        config = config.model_copy(update={"model": unquantized(config.model)})
    report: dict[str, Any] = {
        "adapter_type": method.name,
        "adapter_dir": str(config.train.output_dir),
        "adapter_sha256": path_sha256(adapter_dir),
        "adapter_bytes": adapter.bytes(),
        "base_model": config.model.name_or_path,
        "task": config.model.task,
        "output_dir": str(cfg.output_dir),
        "trained_on_quantized_base": trained_on,
    }
    if trained_on is not None:
        report["quantization_note"] = (
            f"trained on a {trained_on['bits']}-bit quantized base ({trained_on['method']}); merged into and "
            f"parity-checked against the unquantized base"
        )
        log.info("export: the adapter was %s", report["quantization_note"])
    if not (cfg.merge and method.mergeable):
        reason = (
            "export.merge is false"
            if not cfg.merge
            else f"adapter type {method.name!r} cannot be merged into the base weights"
        )
        report.update(
            export_unmerged(
                config, adapter_dir, out_dir, tokenizer, reason, method.name, held_out, label_names
            )
        )
    else:
        report.update(
            export_merged(config, root, adapter, adapter_dir, out_dir, tokenizer, held_out, label_names)
        )
    report["output_sha256"] = path_sha256(out_dir)
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out_dir / EXPORT_REPORT, report)
    write_json_atomic(report_path, export_metrics(report))
    return {"output_dir": str(out_dir), "report_path": str(report_path), **report}


def export_metrics(report: dict[str, Any]) -> dict[str, int | float]:
    """The numbers of the export report in a fixed layout (`export.report_path`, a DVC metric)."""
    return numbers_only({key: report.get(key) for key in EXPORT_METRICS})


def export_merged(
    config, root, adapter, adapter_dir, out_dir, tokenizer, held_out, label_names
) -> dict[str, Any]:
    cfg = config.export
    dtype = DTYPES[cfg.dtype]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_dir(out_dir, key="export.output_dir", root=root, inputs=[adapter_dir]) as tmp,
        tempfile.TemporaryDirectory(prefix=temp_prefix(out_dir, "base"), dir=out_dir.parent) as scratch,
    ):
        base_dir = base_checkpoint_dir(config, Path(scratch), label_names, tokenizer)
        checkpoint = open_checkpoint(base_dir)
        hf_config = export_hf_config(config, base_dir, label_names, tokenizer, dtype)
        if getattr(hf_config, "quantization_config", None):
            raise UserError(
                f"model.name_or_path: {config.model.name_or_path!r} is a pre-quantized checkpoint; export merges "
                "into unquantized base weights; allowed: the unquantized model it was made from (with "
                "model.quantization for training), or export.merge: false"
            )
        log.info(
            "merging %s adapter into %s: %d shard(s), %.1f MB, export dtype %s",
            adapter.method.name,
            config.model.name_or_path,
            len(checkpoint.shards),
            checkpoint.bytes() / 1e6,
            cfg.dtype,
        )
        base_bytes = checkpoint.bytes()
        warm_up(auto_class(config), hf_config, adapter)  # one-time imports are not the merge's memory
        with PeakRSS() as memory:
            merged = stream_merge(checkpoint, auto_class(config), hf_config, adapter, tmp, dtype)
        del checkpoint
        hf_config.architectures = [_architecture(config, hf_config)]
        hf_config.save_pretrained(str(tmp))
        generation = None
        if config.model.task in ("causal_lm", "image_text_to_text"):
            generation = write_generation_config(base_dir, hf_config, tokenizer, tmp)
        tokenizer.save_pretrained(str(tmp))
        if config.model.task == "image_text_to_text":  # processor files: image processor, chat template
            from peft_framework.export.parity import vision_parity_inputs

            processor = _processor(config, tokenizer)
            processor.save_pretrained(str(tmp))
            inputs = vision_parity_inputs(config, held_out, processor)
        else:
            inputs = parity_inputs(config, held_out, tokenizer)
        parity = parity_check(config, tmp, adapter_dir, inputs, tokenizer, label_names, auto_class(config))
        finite = parity.pop("_finite")
        atol = parity_atol(config, parity["parity_max_abs_logit"])
        summary = {
            "merged": True,
            "dtype": cfg.dtype,
            "merge_compute_dtype": "float32",
            "num_shards": len(merged.shards),
            "model_bytes": merged.total_bytes,
            "base_checkpoint_bytes": base_bytes,
            "largest_shard_bytes": merged.largest_shard_bytes,
            "merge_seconds": round(merged.seconds, 3),
            "peak_rss_growth_bytes": memory.growth_bytes,
            "peak_rss_method": memory.method,
            "tensors_from_adapter": merged.from_adapter,
            "tensors_left_out": merged.left_out,
            "checkpoint_tensors_dropped": merged.unused_keys,
            "generation_config": generation,
            "parity_atol": atol,
            **parity,
        }
        passed = finite and parity["parity_max_abs_diff"] <= atol
        summary["parity_passed"] = passed
        if not passed:
            raise StageFailed(
                f"export: the merged model differs from base + adapter: max |logit difference| "
                f"{parity['parity_max_abs_diff']} > export.parity_atol {atol:g} (export.dtype {cfg.dtype}, top-1 "
                f"agreement {parity['parity_top1_agreement']:.3f}); nothing was written to {out_dir}. Raise "
                f"export.parity_atol if the difference is expected for this dtype, or export in float32."
            )
        manifest = {
            "created_by": "peft-framework export",
            "base_model": config.model.name_or_path,
            "revision": config.model.revision,
            "adapter_type": adapter.method.name,
            "adapter_sha256": path_sha256(adapter_dir),
            "dtype": cfg.dtype,
            "parity_max_abs_diff": parity["parity_max_abs_diff"],
        }
        write_manifest(tmp, manifest, name=EXPORT_MANIFEST)
    log.info(
        "exported merged model to %s: %d shard(s), merge %.2fs, peak RSS growth %.1f MB (model %.1f MB), "
        "parity max |diff| %.3g <= %g",
        out_dir,
        summary["num_shards"],
        summary["merge_seconds"],
        summary["peak_rss_growth_bytes"] / 1e6,
        summary["model_bytes"] / 1e6,
        summary["parity_max_abs_diff"],
        atol,
    )
    return summary


def _processor(config: Config, tokenizer):
    """The base model's processor with the adapter's tokenizer (its chat template and pad token)."""
    from peft_framework.models.vlm import load_processor

    processor = load_processor(config.model)
    processor.tokenizer = tokenizer
    if getattr(tokenizer, "chat_template", None):
        processor.chat_template = tokenizer.chat_template
    return processor


def _architecture(config: Config, hf_config) -> str:
    from peft_framework.export.merge import build_skeleton

    return type(build_skeleton(auto_class(config), hf_config)).__name__


def export_unmerged(
    config: Config,
    adapter_dir: Path,
    out_dir: Path,
    tokenizer,
    reason: str,
    method_name: str,
    held_out=None,
    label_names: list[str] | None = None,
) -> dict[str, Any]:
    """The adapter directory as is, plus a reference to the base model it needs; loaded back before it is
    renamed into place (`load_check`): with no merge, that is the export's own check."""
    from peft_framework.adapters.checkpoint import read_adapter_config
    from peft_framework.models.saved_tokenizer import has_tokenizer

    peft_loadable = "peft_type" in read_adapter_config(adapter_dir)
    ours = f"peft_framework.inference.MultiAdapterModel.from_export({str(out_dir)!r})"
    how = (
        f"peft.PeftModel.from_pretrained(<the base model, loaded with transformers>, {str(out_dir)!r}) or {ours}"
        if peft_loadable
        else f"{ours} (adapter type {method_name!r} needs peft-framework at inference)"
    )
    with atomic_dir(out_dir, key="export.output_dir", inputs=[adapter_dir]) as tmp:
        for item in adapter_dir.iterdir():
            if item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        if not has_tokenizer(tmp):
            tokenizer.save_pretrained(str(tmp))
        write_json_atomic(
            tmp / BASE_REFERENCE,
            {
                "base_model_name_or_path": config.model.name_or_path,
                "revision": config.model.revision,
                "task": config.model.task,
                "dtype": config.model.dtype,
                "label_names": label_names if config.model.task == "sequence_classification" else None,
                "adapter_type": method_name,
                "merged": False,
                "reason": reason,
                "load_with": how,
            },
        )
        check = load_check(
            config, tmp, adapter_dir, parity_inputs(config, held_out, tokenizer), tokenizer, label_names
        )
        finite = check.pop("_finite")
        atol = parity_atol(config, check.pop("load_check_max_abs_logit"))
        passed = finite and check["load_check_max_abs_diff"] <= atol
        if not passed:
            raise StageFailed(
                f"export: the unmerged export, loaded back from its base_model.json and adapter, differs from "
                f"base + adapter: max |logit difference| {check['load_check_max_abs_diff']} > {atol:g}; nothing was "
                f"written to {out_dir}. A classification head must be saved with the adapter "
                "(adapter.modules_to_save, e.g. [classifier])"
            )
    log.warning(
        "export: NOT merged (%s): exported the adapter to %s with %s naming the base model %s; load it with %s",
        reason,
        out_dir,
        BASE_REFERENCE,
        config.model.name_or_path,
        how,
    )
    return {
        "merged": False,
        "reason": reason,
        "load_with": how,
        "base_reference": BASE_REFERENCE,
        "load_check_passed": passed,
        "load_check_atol": atol,
        **check,
    }
