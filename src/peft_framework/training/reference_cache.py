"""`train.precompute_reference`: the reference log-probs of every pair, computed once before training.

The pairwise objectives with a reference (dpo, ipo) then read `ref_chosen_logps` / `ref_rejected_logps` from
the batch instead of running the reference forward each step. The values are cached in
`<root>/.cache/reference_logps/<key>.safetensors`, the key hashing the prepared data's hash, the split, the
reference's identity (the `model` config section, the base's weight files' sizes and mtimes when it is a local
directory, and the sha256 of `train.init_adapter` when the reference is base + that adapter) and whether
log-probs are averaged. A re-run reuses them; a changed base or reference adapter computes them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from peft_framework.training.objectives.base import as_reference, forward_logits, sequence_logps
from peft_framework.training.objectives.pairwise import REF_COLUMNS, PairCollator

log = logging.getLogger(__name__)
CACHE_DIR = Path(".cache") / "reference_logps"


def reference_identity(config: Any, root: Path, init_sha256: str | None) -> dict[str, Any]:
    """What the reference's outputs depend on besides the data."""
    identity: dict[str, Any] = {"model": config.model.model_dump(mode="json"), "init_adapter": init_sha256}
    local = (root / config.model.name_or_path) if not Path(config.model.name_or_path).is_absolute() else None
    path = local if local is not None and local.is_dir() else Path(config.model.name_or_path)
    if path.is_dir():
        identity["files"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in path.iterdir()
            if f.suffix in (".safetensors", ".bin", ".json")
        )
    return identity


def cache_key(data_sha256: str, split: str, identity: dict[str, Any], average: bool) -> str:
    material = json.dumps([data_sha256, split, identity, average], sort_keys=True, default=str)
    return hashlib.sha256(material.encode()).hexdigest()


@torch.no_grad()
def compute(model, method, adapter_name: str | None, dataset, objective, pad_token_id: int, batch_size: int):
    """(chosen, rejected) reference log-probs of every row of `dataset`, in order."""
    collate = PairCollator(pad_token_id)
    device = next(model.parameters()).device
    chosen, rejected = [], []
    with as_reference(model, method, adapter_name):
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            logits = forward_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            c, r = sequence_logps(logits, batch["labels"].to(device), objective.average_logps).chunk(2)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def with_reference_logps(
    dataset, split: str, *, key_parts: tuple[str, dict[str, Any]], root: Path, **compute_args: Any
) -> tuple[Any, bool]:
    """`dataset` with the two reference columns (from the cache, else computed and cached); and whether they
    came from the cache."""
    data_sha256, identity = key_parts
    key = cache_key(data_sha256, split, identity, compute_args["objective"].average_logps)
    path = root / CACHE_DIR / f"{key}.safetensors"
    cached = path.is_file()
    if cached:
        tensors = load_file(str(path))
        chosen, rejected = tensors["chosen"], tensors["rejected"]
        log.info("train.precompute_reference: %s reference log-probs from %s", split, path)
    else:
        chosen, rejected = compute(dataset=dataset, **compute_args)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(tmp))
        os.replace(tmp, path)  # a killed run leaves no half-written cache entry
        log.info("train.precompute_reference: %s reference log-probs computed -> %s", split, path)
    if len(chosen) != len(dataset):
        raise ValueError(f"{path}: {len(chosen)} rows cached for a split of {len(dataset)}; delete the file")
    dataset = dataset.add_column(REF_COLUMNS[0], chosen.tolist()).add_column(
        REF_COLUMNS[1], rejected.tolist()
    )
    return dataset, cached
