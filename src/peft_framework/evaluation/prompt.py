"""Evaluate on prompt data (data.kind prompt, the GRPO objective): each model answers the test prompts and
the answers are scored by the run's reward functions (`train.rewards`).

Per model (base, then base + adapter), one completion per test prompt: greedy unless `eval.do_sample`
(then train.grpo.temperature / top_p, seeded by train.seed), at most train.grpo.max_completion_length tokens,
from `generate_completions` (the generation step training uses). Metrics:
- `reward_<name>`: the mean of each reward function over the rows it scored (failed or not-applicable
  values are left out; `reward_failures` counts the failed ones, reported like training's);
- `reward`: the mean total reward (weighted sum, as in training);
- `pass_rate`: the share of completions whose total reward is at least `eval.pass_threshold`;
- `completion_length`: mean tokens per completion (up to and including EOS); `truncated_fraction`: the share
  that hit the length limit without EOS.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from peft_framework.rewards import RewardScorer, load_rewards
from peft_framework.training.generation import generate_completions

#: prepared columns of the prompt kind that are not data for the rewards
NOT_REWARD_COLUMNS = ("prompt_ids", "prompt", "source")


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def score_prompts(model, tokenizer, test, config, device) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, one row per test prompt: completion, its rewards, total, passed, length)."""
    from peft_framework.errors import ConfigError

    rewards = load_rewards(config.train)
    if not rewards:
        raise ConfigError(
            "invalid config", ["train.rewards: empty; data.kind prompt is evaluated by its reward functions"]
        )
    scorer = RewardScorer(rewards, config.train.max_reward_failures)
    grpo = config.train.grpo
    columns = [c for c in test.column_names if c not in NOT_REWARD_COLUMNS]
    row_ids = test["source"] if "source" in test.column_names else list(range(len(test)))
    batch = config.eval.batch_size
    model.eval()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(test), batch):
        part = test.select(range(start, min(start + batch, len(test))))
        out = generate_completions(
            model,
            tokenizer,
            part["prompt_ids"],
            max_new_tokens=grpo.max_completion_length,
            do_sample=config.eval.do_sample,
            temperature=grpo.temperature,
            top_p=grpo.top_p,
            seed=config.train.seed + start,
        )
        result = scorer.score(
            part["prompt"], out.texts, {c: part[c] for c in columns}, row_ids[start : start + len(part)]
        )
        lengths, truncated = out.lengths.tolist(), out.truncated.tolist()
        for i, text in enumerate(out.texts):
            values = {name: float(v[i]) for name, v in result.per_function.items()}
            total = float(result.total[i])
            rows.append(
                {
                    "completion": text,
                    "rewards": {k: (v if math.isfinite(v) else None) for k, v in values.items()},
                    "reward": total,
                    "passed": total >= config.eval.pass_threshold,
                    "completion_length": int(lengths[i]),
                    "truncated": bool(truncated[i]),
                }
            )
    metrics: dict[str, float] = {}
    for reward in rewards:
        scored = [r["rewards"][reward.name] for r in rows if r["rewards"][reward.name] is not None]
        metrics[f"reward_{reward.name}"] = _mean(scored)
    metrics["reward"] = _mean([r["reward"] for r in rows])
    metrics["pass_rate"] = _mean([float(r["passed"]) for r in rows])
    metrics["completion_length"] = _mean([float(r["completion_length"]) for r in rows])
    metrics["truncated_fraction"] = _mean([float(r["truncated"]) for r in rows])
    metrics["reward_failures"] = float(scorer.failures)
    return metrics, rows
