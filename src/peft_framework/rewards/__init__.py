"""Reward functions for online objectives (GRPO): `train.rewards` from config, built-ins and plug-ins, and
the scorer that calls them, reports every failure and stops the run after `train.max_reward_failures`."""

from peft_framework.rewards.loading import Reward, build_reward, load_rewards, needed_columns
from peft_framework.rewards.scorer import RewardResult, RewardScorer

__all__ = ["Reward", "RewardResult", "RewardScorer", "build_reward", "load_rewards", "needed_columns"]
