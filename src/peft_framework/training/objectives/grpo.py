"""GRPO on `data.kind: prompt`: the online objective (TRL 1.16 GRPOTrainer, token-level importance sampling).

Per optimizer step the Trainer hands over its accumulation window of prompt batches (`prepare_window`, called
from `AdapterTrainer.get_batch_samples`); for each batch:
1. `train.grpo.num_generations` completions per prompt are sampled with the adapter on
   (training/generation.py), seeded from train.seed and the global step, so a resumed run replays them;
2. the reward functions (`train.rewards`, peft_framework.rewards) score them; advantages are the rewards
   minus their group's mean, divided by the group's (or batch's) std per `scale_rewards`;
3. with num_iterations > 1 the policy's log-probs of the completions are kept as the old policy; with
   beta > 0 the reference's (the adapter switched off) too.
`compute_loss` then is TRL's GRPOTrainer._compute_loss: the clipped surrogate on the importance ratio, plus
beta x the k3 KL estimate, averaged per `loss_type`. The loss returned is the per-micro-batch loss before
gradient accumulation scaling (AdapterTrainer divides it by the accumulation steps); for dapo that is the
token sum over the micro-batch divided by the mean tokens per micro-batch of the window, across processes.
Metrics carry TRL's names (reward, reward_std, rewards/<name>/mean, kl, clip_ratio/..., completions/...).

With num_iterations = mu > 1 the train sampler repeats each window mu times (TRL's RepeatSampler), and the
completions generated the first time are reused while the window's prompts are the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peft_framework.training.objectives.base import Objective, Reference

PROMPT_COLUMNS = ("prompt_ids", "prompt")
SOURCE = "source"  # "file:line" of the row (data.kind prompt): names the row in reward failures


# ------------------------------------------------------------------------------------------ collation
@dataclass(frozen=True)
class PromptCollator:
    """Prompt rows -> {"prompt_ids": [[int]], "prompt": [str], "source": [row name], "columns": {name: [value]}}
    (python lists; the extra columns go to the reward functions unchanged)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        extra = [k for k in features[0] if k not in (*PROMPT_COLUMNS, SOURCE)]
        return {
            "prompt_ids": [list(f["prompt_ids"]) for f in features],
            "prompt": [f.get("prompt", "") for f in features],
            "source": [f.get(SOURCE) for f in features],
            "columns": {k: [f[k] for f in features] for k in extra},
        }


# ---------------------------------------------------------------------------------- TRL's statistics
def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Std ignoring NaN, with Bessel's correction; NaN for fewer than 2 values (trl.trainer.utils.nanstd)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    out = torch.sqrt(variance * correction)
    return out.squeeze(dim) if dim is not None else out.reshape(())


def _nanmin(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float("nan")) if torch.isnan(x).all() else torch.min(x[~torch.isnan(x)])


def _nanmax(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float("nan")) if torch.isnan(x).all() else torch.max(x[~torch.isnan(x)])


def group_advantages(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int, scale_rewards: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages, rewards, is_std_zero) from the (N, F) rewards, rows grouped by prompt; TRL's
    sum_then_normalize: weighted nansum, unscorable rows (every function NaN) NaN, then advantage 0."""
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    is_std_zero = torch.isclose(std, torch.zeros_like(std))
    return torch.nan_to_num(advantages, nan=0.0), rewards, is_std_zero


@dataclass(frozen=True)
class LossSettings:
    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    max_completion_length: int = 512
    #: the KL term times the importance ratio (TRL's default use_bias_correction_kl): its gradient is then
    #: the unbiased reverse-KL gradient, also on-policy where the ratio is 1 but differentiable
    bias_correction_kl: bool = True


def grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    ref_per_token_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    token_normalizer: torch.Tensor | float | None = None,
    entropies: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL GRPOTrainer._compute_loss (importance_sampling_level token; no vLLM correction, no entropy mask)
    for one micro-batch, before gradient-accumulation scaling. `token_normalizer` (dapo): the window's
    completion tokens over all processes / processes / accumulation steps."""
    mask = mask.to(per_token_logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    coef_1 = torch.exp(per_token_logps - old)
    coef_2 = torch.clamp(coef_1, 1 - settings.epsilon_low, 1 + settings.epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    metrics: dict[str, torch.Tensor] = {}

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    if settings.beta != 0.0:
        assert ref_per_token_logps is not None, "beta > 0 needs the reference log-probs"
        delta = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(delta) - delta - 1
        if settings.bias_correction_kl:
            per_token_kl = per_token_kl * coef_1
        per_token_loss = per_token_loss + settings.beta * per_token_kl
        metrics["kl"] = masked_mean(per_token_kl.detach())
    if settings.loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif settings.loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif settings.loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * settings.max_completion_length)
    elif settings.loss_type == "dapo":
        normalizer = mask.sum() if token_normalizer is None else token_normalizer
        loss = (per_token_loss * mask).sum() / torch.as_tensor(normalizer, dtype=mask.dtype).clamp(min=1.0)
    else:
        raise ValueError(f"train.grpo.loss_type: {settings.loss_type!r}; allowed: grpo, dr_grpo, bnpo, dapo")
    if entropies is not None:
        metrics["entropy"] = masked_mean(entropies.detach())
    with torch.no_grad():
        low = ((coef_1 < 1 - settings.epsilon_low) & (advantages < 0)).float()
        high = ((coef_1 > 1 + settings.epsilon_high) & (advantages > 0)).float()
        metrics["clip_ratio/low_mean"] = masked_mean(low)
        metrics["clip_ratio/high_mean"] = masked_mean(high)
        metrics["clip_ratio/region_mean"] = masked_mean(((low + high) > 0).float())
        metrics["clip_ratio/low_min"] = _nanmin((low * mask).sum(-1) / mask.sum(-1))
        metrics["clip_ratio/high_max"] = _nanmax((high * mask).sum(-1) / mask.sum(-1))
    return loss, metrics


# --------------------------------------------------------------------------------------- log-probs
def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens (left padding), as `generate` numbers them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


def completion_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token log p(completion token), entropies) under log_softmax(logits / temperature), as TRL."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_ids.size(1)
    kwargs: dict[str, Any] = {"use_cache": False, "position_ids": _position_ids(attention_mask)}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    logits = logits[:, -keep - 1 : -1, :].float() / temperature
    logps = logits.log_softmax(-1)
    per_token = torch.gather(logps, 2, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logps.exp() * logps).sum(-1) if with_entropy else None
    return per_token, entropy


def _accepts(model: torch.nn.Module, name: str) -> bool:
    inner = model.module if hasattr(model, "module") else model
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------- objective
class GRPO(Objective):
    name = "grpo"
    columns = PROMPT_COLUMNS
    keeps_extra_columns = True  # the prepared data's other columns (e.g. `answer`) go to the rewards
    mean_over_batch = True  # per micro-batch: AdapterTrainer divides it by the accumulation steps

    def __init__(
        self,
        settings: Any,
        rewards: Sequence[Any],
        scorer: Any,
        seed: int = 42,
        tokenizer: Any = None,
    ) -> None:
        self.cfg = settings
        self.rewards = list(rewards)
        self.scorer = scorer
        self.seed = seed
        self.tokenizer = tokenizer
        self.needs_reference = settings.beta != 0.0
        self.weights = torch.tensor([float(r.weight) for r in self.rewards], dtype=torch.float32)
        self.loss_settings = LossSettings(
            loss_type=settings.loss_type,
            beta=settings.beta,
            epsilon_low=settings.epsilon,
            epsilon_high=settings.epsilon_high if settings.epsilon_high is not None else settings.epsilon,
            max_completion_length=settings.max_completion_length,
        )
        self._cache: tuple[list[list[list[int]]], list[dict[str, Any]]] | None = None
        self.samples: list[dict[str, Any]] = []  # the latest sampled completions, for the progress table

    @classmethod
    def from_config(cls, tc: Any) -> Objective:
        from peft_framework.errors import ConfigError
        from peft_framework.rewards import RewardScorer, load_rewards

        rewards = load_rewards(tc)
        if not rewards:
            raise ConfigError(
                "invalid config",
                [
                    "train.rewards: empty, but train.objective is grpo; allowed: a list of {name, weight, ...} "
                    "(see `peft-framework rewards`): every completion would score 0 and nothing would be learned"
                ],
            )
        return cls(tc.grpo, rewards, RewardScorer(rewards, tc.max_reward_failures), seed=tc.seed)

    def use_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def collator(self, pad_token_id: int) -> PromptCollator:
        return PromptCollator()

    @property
    def repeat_batches(self) -> int:
        """How many times the train sampler yields each accumulation window (TRL's num_iterations)."""
        return self.cfg.num_iterations

    # --- generation and scoring --------------------------------------------------------------------
    def prepare_window(
        self,
        model: torch.nn.Module,
        batches: list[dict[str, Any]],
        reference: Reference | None,
        step: int,
        *,
        training: bool = True,
        rank: int = 0,
        sum_across: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        num_processes: int = 1,
    ) -> list[dict[str, Any]]:
        """The window's prompt batches with completions, advantages and (where needed) old and reference
        log-probs; reuses the last window's completions while num_iterations says so (training only)."""
        key = [b["prompt_ids"] for b in batches]
        mu = self.cfg.num_iterations
        if training and mu > 1 and step % mu != 0 and self._cache is not None and self._cache[0] == key:
            return [{k: v for k, v in b.items() if k != "generation_metrics"} for b in self._cache[1]]
        out = [
            self._generate_and_score(model, b, reference, self.seed + 100_003 * step + 1_009 * i + rank)
            for i, b in enumerate(batches)
        ]
        tokens = sum_across(torch.stack([b["completion_mask"].sum() for b in out]).sum().float())
        per_micro = tokens / num_processes / len(out)
        for b in out:
            b["token_normalizer"] = per_micro
        if training and mu > 1:
            self._cache = (key, out)
        return out

    @torch.no_grad()
    def _generate_and_score(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None, seed: int
    ) -> dict[str, Any]:
        from peft_framework.training.generation import generate_completions, left_pad

        cfg, g = self.cfg, self.cfg.num_generations
        out = generate_completions(
            model,
            self.tokenizer,
            batch["prompt_ids"],
            max_new_tokens=cfg.max_completion_length,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            num_return_sequences=g,
            seed=seed,
        )
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = left_pad([batch["prompt_ids"][i] for i in out.prompt_index], 0)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompt_ids = prompt_ids.masked_fill(prompt_mask == 0, pad_id)
        completion_mask = out.completion_mask
        if cfg.mask_truncated_completions:
            completion_mask = completion_mask * (~out.truncated).unsqueeze(1).long()
        result: dict[str, Any] = {
            "prompt_ids": prompt_ids.to(device),
            "prompt_mask": prompt_mask.to(device),
            "completion_ids": out.completion_ids.to(device),
            "completion_mask": completion_mask.to(device),
        }
        tensors = [result[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
        if cfg.num_iterations > 1:
            result["old_per_token_logps"] = completion_logps(model, *tensors, cfg.temperature)[0]
        if cfg.beta != 0.0:
            assert reference is not None, "train.grpo.beta > 0 needs the reference (the adapter switched off)"
            with reference():
                result["ref_per_token_logps"] = completion_logps(model, *tensors, cfg.temperature)[0]

        prompts = [batch["prompt"][i] for i in out.prompt_index]
        columns = {k: [v[i] for i in out.prompt_index] for k, v in batch["columns"].items()}
        row_ids = [batch["source"][i] for i in out.prompt_index] if batch.get("source") else None
        scored = self.scorer.score(prompts, out.texts, columns, row_ids)
        per_func = torch.stack([scored.per_function[r.name] for r in self.rewards], dim=1).float()
        advantages, rewards, is_std_zero = group_advantages(per_func, self.weights, g, cfg.scale_rewards)
        result["advantages"] = advantages.to(device)
        result["generation_metrics"] = self._generation_metrics(
            per_func, rewards, is_std_zero, out.lengths, out.truncated, scored.failures
        )
        self.samples = [
            {
                "prompt": prompts[i],
                "completion": out.texts[i],
                **{r.name: float(per_func[i, j]) for j, r in enumerate(self.rewards)},
                "reward": float(rewards[i]),
                "advantage": float(advantages[i]),
            }
            for i in range(min(cfg.log_completions, len(prompts)))
        ]
        return result

    def _generation_metrics(self, per_func, rewards, is_std_zero, lengths, truncated, failures):  # noqa: ANN001
        lengths = lengths.float()
        terminated = lengths[~truncated] if (~truncated).any() else torch.zeros(1)
        metrics = {
            "completions/mean_length": lengths.mean(),
            "completions/min_length": lengths.min(),
            "completions/max_length": lengths.max(),
            "completions/clipped_ratio": truncated.float().mean(),
            "completions/mean_terminated_length": terminated.mean(),
            "completions/min_terminated_length": terminated.min(),
            "completions/max_terminated_length": terminated.max(),
        }
        for j, reward in enumerate(self.rewards):
            metrics[f"rewards/{reward.name}/mean"] = torch.nanmean(per_func[:, j])
            metrics[f"rewards/{reward.name}/std"] = nanstd(per_func[:, j])
        metrics["reward"] = torch.nanmean(rewards)
        metrics["reward_std"] = nanstd(rewards)
        metrics["frac_reward_zero_std"] = is_std_zero.float().mean()
        metrics["reward_failures"] = torch.tensor(float(failures))
        return metrics

    # --- loss ------------------------------------------------------------------------------------
    def compute_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], reference: Reference | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "completion_ids" not in batch:
            raise RuntimeError("grpo: the batch has no completions; prepare_window must run first")
        logps, entropies = completion_logps(
            model,
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            batch["completion_mask"],
            self.cfg.temperature,
            with_entropy=True,
        )
        loss, metrics = grpo_loss(
            logps,
            batch.get("old_per_token_logps"),
            batch.get("ref_per_token_logps"),
            batch["advantages"],
            batch["completion_mask"],
            self.loss_settings,
            token_normalizer=batch.get("token_normalizer"),
            entropies=entropies,
        )
        metrics.update(batch.get("generation_metrics", {}))
        return loss, metrics

    def pop_samples(self) -> list[dict[str, Any]]:
        samples, self.samples = self.samples, []
        return samples
