"""The experiment config: one typed, frozen section per pipeline concern.

Every model forbids unknown keys (typos are errors, never silently ignored). The `adapter` section is
special: its concrete model depends on `adapter.type` and comes from the adapter registry, see
`peft_framework.config.loading.resolve_config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, model_validator

BUILTIN_TINY_LLAMA = "builtin:tiny-llama"


class Section(BaseModel):
    """Base for every config model: strict, immutable, hashable by content."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    name_or_path: str = Field(
        BUILTIN_TINY_LLAMA,
        description="HuggingFace hub id, a local model directory, or 'builtin:tiny-llama' (offline demo model).",
    )
    task: Literal["causal_lm", "sequence_classification"] = "causal_lm"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    num_labels: int | None = Field(
        None, ge=2, description="sequence_classification only; default: taken from the prepared data's labels."
    )


# ---------------------------------------------------------------------------------------------- data
class CleanConfig(Section):
    unicode_normalization: Literal["NFC", "NFKC", "none"] = "NFC"
    normalize_whitespace: bool = True
    remove_control_chars: bool = True
    drop_empty: bool = True
    dedup: Literal["none", "exact", "normalized"] = "normalized"
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(20000, ge=1)
    min_tokens: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    label_case: Literal["lower", "upper", "none"] = "lower"
    label_aliases: dict[str, str] = Field(default_factory=dict)


class ValidateConfig(Section):
    max_rejected_fraction: float = Field(0.5, ge=0.0, le=1.0)
    allowed_roles: list[str] = Field(default_factory=lambda: ["system", "user", "assistant"])
    labels: list[str] | None = Field(None, description="classification: the allowed label set (after normalization).")


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 42

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves no training data; allowed: sum < 1"
            )
        return self


class DataConfig(Section):
    source: str | list[str] = Field(
        "data/raw/instructions.jsonl",
        description="File, glob, directory, list of those, or a HuggingFace dataset id ('hf:owner/name').",
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = "auto"
    kind: Literal["instruction", "chat", "text", "classification"] = "instruction"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Canonical field -> column name in the source, e.g. {output: answer}."
    )
    hf_split: str = "train"
    clean: CleanConfig = Field(default_factory=CleanConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    template: Literal["alpaca", "chat_template", "none"] = "alpaca"
    train_on_responses_only: bool = True
    max_seq_len: int = Field(256, ge=8)
    add_eos: bool = True
    output_dir: str = "data/prepared"
    rejected_path: str = "data/rejected.jsonl"
    report_path: str = "reports/data.json"

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, populate_by_name=True)


# ------------------------------------------------------------------------------------------- adapter
class AdapterConfigBase(Section):
    """Keys every adapter type has. Each registered type subclasses this with its own keys."""

    type: str = "lora"
    target_modules: str | list[str] | None = Field(
        None,
        description="Module names (suffix match), a regex (full match on the module path), 'all-linear', "
        "or null for the adapter type's default for the model's architecture.",
    )
    exclude_modules: str | list[str] | None = None
    modules_to_save: list[str] | None = Field(
        None, description="Extra modules trained in full and saved with the adapter (e.g. a classifier head)."
    )


# --------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    output_dir: str = "models/adapter"
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="> 0 overrides epochs")
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = (
        "linear"
    )
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    seed: int = 42
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="null: evaluate once per epoch")
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    resume: str = Field("auto", description="'auto' (latest complete checkpoint), 'never', or a checkpoint path")
    checkpoint_dir: str = "models/checkpoints"
    metrics_dir: str = "reports/train"
    num_workers: int = Field(0, ge=0)


# ---------------------------------------------------------------------------------------------- eval
class EvalConfig(Section):
    report_path: str = "reports/eval.json"
    predictions_path: str = "reports/eval_predictions.jsonl"
    plots_dir: str = "reports/plots"
    batch_size: int = Field(8, ge=1)
    max_samples: int | None = Field(None, ge=1)
    generate: bool = True
    max_new_tokens: int = Field(32, ge=1)
    metrics_dir: str = Field("metrics", description="Directory of local `evaluate` metric modules, loaded by path.")


# -------------------------------------------------------------------------------------------- export
class ExportConfig(Section):
    output_dir: str = "models/merged"
    report_path: str = "reports/export.json"
    merge: bool = True
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_shard_size: str = "2GB"
    parity_samples: int = Field(4, ge=1)
    parity_atol: float = Field(1e-3, gt=0)


# ---------------------------------------------------------------------------------------------- root
class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: SerializeAsAny[AdapterConfigBase] = Field(default_factory=AdapterConfigBase)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with YAML key names (e.g. `data.validate`)."""
        return self.model_dump(mode="json", by_alias=True)


SECTIONS = ("model", "data", "adapter", "train", "eval", "export")
