"""AdaLoRA's `AdapterMethod`: SVD-form targets whose ranks are pruned during training, checkpoint names and
json (peft's, peft_type ADALORA), and the training hooks (rank allocator, orthogonal regulariser)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peft_framework.adapters.adalora.config import AdaLoraConfig
from peft_framework.adapters.adalora.layer import SVDLinear
from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME
from peft_framework.adapters.method import (
    LORA_FAMILY_UNSUPPORTED,
    AdapterRecord,
    WrapperMethod,
    architecture_default,
)
from peft_framework.adapters.state_dict import check_state_dict
from peft_framework.adapters.targeting import saved_target_modules
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError, ConfigError

log = logging.getLogger(__name__)

RANK_KEY_SUFFIX = ".lora_E"
KINDS = ("lora_A", "lora_E", "lora_B")

_UNSUPPORTED_UNLESS = {**LORA_FAMILY_UNSUPPORTED, "bias": ("none", None)}

#: peft's TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING (0.21), used when target_modules is null
DEFAULT_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt2": ["c_attn"],
    "bloom": ["query_key_value"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "llama4": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "gpt_bigcode": ["c_attn"],
    "deberta": ["in_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
}


@dataclass
class AdaLoraRecord(AdapterRecord):
    #: kept ranks per target path (init_r booleans); None until the allocator first masks
    rank_pattern: dict[str, list[bool]] | None = None
    #: True when the layers were built already cut to `rank_pattern` (a loaded, pruned checkpoint)
    pruned: bool = False
    #: the budget schedule's length as used by training (config.total_step or the run's step count)
    total_step: int | None = None
    #: the current total rank budget (set by the allocator)
    budget: int | None = None


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class AdaLoraMethod(WrapperMethod):
    name, label, peft_type = "adalora", "AdaLoRA", "ADALORA"
    config_class, layer_class, mergeable = AdaLoraConfig, SVDLinear, True
    never_all_zero = ".lora_A"  # P starts random, Λ at zero
    #: a module whose every rank was pruned saves 0-row tensors, exactly as peft does
    may_save_empty_tensors = True
    description = (
        "AdaLoRA: SVD-form low-rank updates, ranks pruned by importance during training (peft-compatible)"
    )

    def default_targets(self, model: nn.Module) -> list[str]:
        return architecture_default(
            model, DEFAULT_TARGETS, "target_modules", "module names, a regex or 'all-linear'"
        )

    def plan(self, model: nn.Module, config: AdaLoraConfig) -> AdaLoraRecord:
        targets = super().plan(model, config).targets
        pattern = _pattern_by_path(config.rank_pattern, targets) if config.rank_pattern else None
        return AdaLoraRecord(config=config, targets=targets, rank_pattern=pattern, pruned=pattern is not None)

    def add_to_layer(self, layer: SVDLinear, adapter_name: str, record: AdaLoraRecord, path: str) -> None:
        c: AdaLoraConfig = record.config
        layer.add_adapter(adapter_name, c.init_r, c.alpha, c.dropout)
        if record.rank_pattern is not None and path in record.rank_pattern:
            layer.keep_ranks(adapter_name, record.rank_pattern[path])

    def layer_tensors(
        self, layer: SVDLinear, adapter_name: str, record: AdaLoraRecord
    ) -> dict[str, nn.Parameter]:
        return {kind: getattr(layer, kind)[adapter_name] for kind in KINDS}

    # --- checkpoints --------------------------------------------------------------------------------
    def adapter_state_dict(
        self, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> dict[str, torch.Tensor]:
        """On-disk tensors: like peft, A/E/B are cut to the kept ranks of the current rank pattern."""
        rec: AdaLoraRecord = self.record(model, adapter_name)
        tensors = super().adapter_state_dict(model, adapter_name)
        if rec.rank_pattern is not None and not rec.pruned:
            for path, mask in rec.rank_pattern.items():
                key = self.disk_prefix + path + "."
                keep = torch.tensor(mask, dtype=torch.bool, device=tensors[key + "lora_A"].device)
                tensors[key + "lora_A"] = tensors[key + "lora_A"][keep]
                tensors[key + "lora_E"] = tensors[key + "lora_E"][keep]
                tensors[key + "lora_B"] = tensors[key + "lora_B"][:, keep]
        return tensors

    @torch.no_grad()
    def load_adapter_state_dict(
        self, model: nn.Module, state_dict: dict[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER_NAME
    ) -> None:
        """Copy a checkpoint into the adapter. A checkpoint cut to k < init_r kept ranks (what `save_adapter`
        writes once ranks were pruned) also loads into a full, unpruned adapter (Trainer resume): the k
        triplets go to ranks 0..k-1 and the other ranks are masked (Λ = 0). The update is a sum over
        triplets, so the model computes exactly what was saved; only the triplets' order changes."""
        rec: AdaLoraRecord = self.record(model, adapter_name)
        prefix = self.disk_prefix
        params = {prefix + k: p for k, p in self.adapter_tensors(model, adapter_name).items()}
        check_state_dict(params, state_dict, "AdaLoRA checkpoint", f"adapter {adapter_name!r}", shapes=False)
        cut: dict[str, int] = {}  # target path -> kept ranks, for checkpoint triplets fewer than the model's
        wrong = []
        for key, param in params.items():
            shape, expected = tuple(state_dict[key].shape), tuple(param.shape)
            if shape == expected:
                continue
            path, _, kind = key[len(prefix) :].rpartition(".")
            rank_dim = 1 if kind == "lora_B" else 0
            other = 1 - rank_dim
            if (
                kind in ("lora_A", "lora_E", "lora_B")
                and not rec.pruned
                and shape[other] == expected[other]
                and shape[rank_dim] < expected[rank_dim]
                and cut.setdefault(path, shape[rank_dim]) == shape[rank_dim]
            ):
                continue
            wrong.append(f"{key}: checkpoint {shape}, model {expected}")
        for path, k in cut.items():
            key = f"{prefix}{path}."
            ranks = {
                state_dict[key + "lora_A"].shape[0],
                state_dict[key + "lora_E"].shape[0],
                state_dict[key + "lora_B"].shape[1],
            }
            if ranks != {k}:
                wrong.append(
                    f"{path}: lora_A/lora_E/lora_B disagree on the number of ranks ({sorted(ranks)})"
                )
        if wrong:
            raise AdapterError("AdaLoRA checkpoint tensor shapes do not fit the model", wrong[:10])
        for key, param in params.items():
            path, _, kind = key[len(prefix) :].rpartition(".")
            if path in cut and kind in ("lora_A", "lora_E", "lora_B"):
                k = cut[path]
                if kind == "lora_B":
                    param[:, :k].copy_(state_dict[key])
                else:
                    param[:k].copy_(state_dict[key])
                if kind == "lora_E":
                    param[k:].zero_()
            else:
                param.copy_(state_dict[key])
        if cut:
            rec.rank_pattern = {
                path: [i < cut.get(path, layer.r[adapter_name]) for i in range(layer.r[adapter_name])]
                for path, layer in self.layers(model, adapter_name).items()
            }

    def saved_fields(self, model: nn.Module, config: AdaLoraConfig, rec: AdaLoraRecord) -> dict[str, Any]:
        user = config.target_modules
        total_step = rec.total_step or config.total_step or (config.tinit + config.tfinal + 1)
        saved: dict[str, Any] = {
            "r": 8,  # unused by AdaLoRA (peft warns when it is not its default 8)
            "lora_alpha": _number(config.alpha),
            "lora_dropout": config.dropout,
            "target_modules": saved_target_modules(
                model, rec.targets, config.exclude_modules, [user] if isinstance(user, str) else []
            ),
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "fan_in_fan_out": self.fan_in_fan_out(model, rec),
            "layers_to_transform": None,
            "layers_pattern": None,
            "alpha_pattern": {},
            "init_r": config.init_r,
            "target_r": config.target_r,
            "tinit": config.tinit,
            "tfinal": config.tfinal,
            "deltaT": config.deltaT,
            "beta1": config.beta1,
            "beta2": config.beta2,
            "orth_reg_weight": config.orth_reg_weight,
            "total_step": total_step,
            "rank_pattern": _saved_rank_pattern(rec),
        }
        if config.exclude_modules is not None:
            saved["exclude_modules"] = config.exclude_modules
        return saved

    def config_from_saved(self, saved: dict[str, Any]) -> AdapterConfigBase:
        return self.config_from_fields(
            {
                **self.fields_from_saved(saved, _UNSUPPORTED_UNLESS, ("target_modules",)),
                "init_r": saved.get("init_r", 12),
                "target_r": saved.get("target_r", 8),
                "alpha": saved.get("lora_alpha", 8),
                "dropout": saved.get("lora_dropout", 0.0),
                "tinit": saved.get("tinit", 0),
                "tfinal": saved.get("tfinal", 0),
                "deltaT": saved.get("deltaT", 1),
                "beta1": saved.get("beta1", 0.85),
                "beta2": saved.get("beta2", 0.85),
                "orth_reg_weight": saved.get("orth_reg_weight", 0.5),
                "total_step": saved.get("total_step"),
                "rank_pattern": saved.get("rank_pattern") or None,
            }
        )

    # --- training hooks -------------------------------------------------------------------------
    def training_callbacks(self, model: nn.Module, config: AdapterConfigBase, total_steps: int) -> list[Any]:
        """The rank allocator for the active adapter, run after every optimizer step."""
        from peft_framework.adapters.adalora.allocator import AdaLoraCallback, RankAllocator

        config = self.check_config(config)
        name = self.active_adapter(model)
        if name is None:
            raise AdapterError("AdaLoRA training needs an active adapter; inject one first")
        rec = self.record(model, name)
        if rec.pruned:
            log.warning(
                "AdaLoRA adapter %r was loaded already cut to its rank_pattern: its ranks stay fixed (no allocation)",
                name,
            )
            return []
        total_step = config.total_step or total_steps
        if config.tinit >= total_step - config.tfinal:
            source = "adapter.total_step" if config.total_step else "the run's optimizer steps"
            problem = (
                f"adapter.tinit + adapter.tfinal ({config.tinit} + {config.tfinal}) must be smaller than "
                f"{source} ({total_step}) so that AdaLoRA has a budgeting phase"
            )
            raise ConfigError("invalid config", [problem])
        rec.total_step = total_step
        return [AdaLoraCallback(RankAllocator(model, name, total_step))]

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """orth_reg_weight x the orthogonal regulariser of the active adapter (None when there is none)."""
        name = self.active_adapter(model)
        if name is None:
            return None
        rec = self.record(model, name)
        if rec.merged or rec.config.orth_reg_weight == 0:
            return None
        reg = orthogonal_regularization(self.layers(model, name).values(), name)
        return None if reg is None else rec.config.orth_reg_weight * reg


def _pattern_by_path(pattern: dict[str, list[bool]], targets: list[str]) -> dict[str, list[bool]]:
    """Saved keys ('<path>.lora_E', peft may add '.<adapter name>') -> target paths."""
    out: dict[str, list[bool]] = {}
    unknown = []
    for key, mask in pattern.items():
        path = key
        if RANK_KEY_SUFFIX + "." in key:
            path = key[: key.rindex(RANK_KEY_SUFFIX + ".")]
        elif key.endswith(RANK_KEY_SUFFIX):
            path = key[: -len(RANK_KEY_SUFFIX)]
        if path not in targets:
            unknown.append(key)
        out[path] = [bool(v) for v in mask]
    if unknown:
        raise AdapterError(
            f"adapter.rank_pattern: keys {unknown[:5]} name no adapted module; allowed: '<module path>.lora_E' "
            f"for the adapted modules, e.g. {targets[0] + RANK_KEY_SUFFIX!r}"
        )
    return out


def _saved_rank_pattern(rec: AdaLoraRecord) -> dict[str, list[bool]] | None:
    if rec.rank_pattern is None:
        return None
    return {f"{path}{RANK_KEY_SUFFIX}": list(mask) for path, mask in sorted(rec.rank_pattern.items())}


def orthogonal_regularization(layers: Iterable[SVDLinear], adapter_name: str) -> torch.Tensor | None:
    """Mean over all P and Q matrices of ||PPᵀ - I||_F, ||QᵀQ - I||_F (peft's AdaLoraModel.forward)."""
    total: torch.Tensor | None = None
    count = 0
    for layer in layers:
        for cov in (
            layer.lora_A[adapter_name] @ layer.lora_A[adapter_name].T,
            layer.lora_B[adapter_name].T @ layer.lora_B[adapter_name],
        ):
            eye = torch.eye(*cov.size(), out=torch.empty_like(cov))
            term = torch.norm(cov - eye, p="fro")
            total = term if total is None else total + term
            count += 1
    return None if total is None else total / count
