"""The `train` section of the config: Trainer settings, checkpoints, precision, scale-out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from peft_framework.config.grpo_schema import GrpoConfig
from peft_framework.config.rewards_schema import RewardConfig, check_reward_list
from peft_framework.config.section import Section


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
    router_aux_loss_coef: float | None = Field(
        None,
        ge=0.0,
        description="Mixture-of-Experts bases: add the router load-balancing loss times this coefficient "
        "(transformers' output_router_logits) and log it as router_aux_loss; null: off.",
    )
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
        description="causal_lm: the train split is packed across the epoch (best-fit decreasing) into "
        "sequences of at most data.max_seq_len tokens; position_ids restart per row, so attention stays "
        "within each row (block-diagonal) and the loss covers the same tokens as padded batches. The steps "
        "per epoch count packs, not rows; the validation split stays unpacked.",
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
    init_adapter: str | None = Field(
        None,
        description="Start from the weights of this adapter directory (ours or peft's save_pretrained); "
        "its tensors must match adapter.* exactly. null: a fresh adapter.",
    )
    # --- objective (training/objectives/) ---------------------------------------------------------
    objective: str = Field(
        "sft",
        description="What is optimised: sft (next-token loss) | dpo | ipo | orpo | simpo (data.kind preference) | "
        "kto (data.kind unpaired_preference) | grpo (data.kind prompt, online: train.grpo). The adapter is the policy; the reference is the same network "
        "with the adapter off (or train.init_adapter's weights, frozen).",
    )
    beta: float = Field(
        0.1,
        gt=0,
        description="dpo/ipo/kto/simpo: TRL's beta (the reward temperature; for ipo the regularisation tau).",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="dpo: conservative DPO (cDPO) label noise; simpo: as TRL's CPO."
    )
    orpo_lambda: float = Field(
        0.1, gt=0, description="orpo: weight of the odds-ratio term (TRL ORPOConfig.beta)."
    )
    simpo_gamma: float = Field(
        0.5, ge=0, description="simpo: target reward margin (TRL CPOConfig.simpo_gamma)."
    )
    kto_desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable (label true) rows.")
    kto_undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of undesirable (label false) rows."
    )
    grpo: GrpoConfig = Field(
        default_factory=GrpoConfig,
        description="grpo (data.kind prompt): group size, sampling, clipping, KL; TRL GRPOConfig's names and "
        "defaults (config/grpo_schema.py).",
    )
    precompute_reference: bool = Field(
        False,
        description="Preference objectives with a reference: compute the reference log-probs once before "
        "training (cached by prepared-data hash + reference identity) instead of a reference pass per batch.",
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
    # --- rewards of online objectives (config/rewards_schema.py) -------------------------------------
    rewards: list[RewardConfig] = Field(
        default_factory=list,
        description="Reward functions of an online objective (grpo): [{name, weight, label, ...options}]; "
        "built-ins exact_match, numeric_match, similarity, regex_format, length, or plug-ins (entry-point group "
        "peft_framework.rewards).",
    )
    max_reward_failures: int = Field(
        0,
        ge=0,
        description="Reward calls that may fail (raise, or return a non-number) before the run stops; each "
        "failure is logged with the function, the row and the value, and counted in the metrics.",
    )

    @field_validator("rewards")
    @classmethod
    def _unique_reward_names(cls, value: list[RewardConfig]) -> list[RewardConfig]:
        return check_reward_list(value)

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        from peft_framework.config import objectives
        from peft_framework.config.problems import did_you_mean

        if value not in objectives.OBJECTIVES:
            raise ValueError(
                f"unknown objective {value!r}{did_you_mean(value, objectives.names())}; "
                f"allowed: {', '.join(objectives.names())}"
            )
        return value

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
