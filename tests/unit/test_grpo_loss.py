"""GRPO against TRL 1.16.0 (the oracle): trl.GRPOTrainer built on the same tiny Llama, driven through its own
methods, no training run.

Compared, within 1e-5:
- the loss, its gradient with respect to the per-token log-probs, and the metrics kl, entropy and
  clip_ratio/{low_mean,high_mean,region_mean,low_min,high_max}: `GRPOTrainer._compute_loss` on the same
  prompts, completions, masks, advantages, old / reference / policy log-probs, for loss_type grpo, bnpo,
  dr_grpo, dapo, with and without the KL term and with num_iterations > 1 (old log-probs given);
- the advantages and the metrics reward, reward_std, rewards/<name>/mean|std, frac_reward_zero_std,
  completions/mean_length|min_length|max_length|clipped_ratio|*_terminated_length:
  `GRPOTrainer._generate_and_score_completions` with its generation replaced by the same completions ours
  sample, for scale_rewards group, batch and none, with a reward that returns None for some rows and a group
  whose rewards are all equal;
- the per-token log-probs of the completions: `GRPOTrainer._get_per_token_logps_and_entropies` (its fused
  LM head) vs ours (`completion_logps`), temperature 0.7, on prompts of one length: with left-padded prompts
  ours number positions from each row's first real token (as `generate` does when sampling), TRL's forward
  from the first pad, so their log-probs differ there by design.
TRL runs with bf16=False (its default bf16 autocast would round the log-probs; ours are fp32).
"""

from __future__ import annotations

import datasets
import pytest
import torch

from grpo_fixtures import ToyReward, ToyScorer
from peft_framework.config.grpo_schema import GrpoConfig
from peft_framework.models.tiny import tiny_llama, tiny_tokenizer
from peft_framework.training import generation
from peft_framework.training.objectives.grpo import GRPO, LossSettings, completion_logps, grpo_loss

trl = pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-5
G = 4
MAX_LEN = 6
LOSS_METRICS = (
    "kl",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "clip_ratio/low_min",
    "clip_ratio/high_max",
)


def exact_a(prompts, completions, **columns):
    return [float(c.strip() == a) for c, a in zip(completions, columns["answer"])]


def length_or_none(prompts, completions, **columns):
    return [None if i % 3 == 0 else -len(c) / 4 for i, c in enumerate(completions)]


REWARDS = [ToyReward("exact_a", 1.0, exact_a), ToyReward("length_or_none", 0.5, length_or_none)]


def _trl_trainer(tmp_path, **settings):
    data = datasets.Dataset.from_dict({"prompt": ["x"] * G, "answer": ["a"] * G})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to=[],
        use_cpu=True,
        bf16=False,  # TRL's default bf16 autocast would round the log-probs; ours run in fp32
        per_device_train_batch_size=2 * G,
        num_generations=G,
        max_completion_length=MAX_LEN,
        reward_weights=[r.weight for r in REWARDS],
        save_strategy="no",
        logging_strategy="no",
        **settings,
    )
    funcs = []
    for reward in REWARDS:  # TRL names a function by its __name__
        funcs.append(reward.fn)
    trainer = trl.GRPOTrainer(
        model=tiny_llama(),
        reward_funcs=funcs,
        args=args,
        train_dataset=data,
        processing_class=tiny_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    return _trl_trainer(tmp_path_factory.mktemp("grpo"), temperature=0.7)


def _loss_inputs(seed: int = 0, batch: int = 6, length: int = 5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i, n in enumerate([5, 3, 1, 4, 5, 2][:batch]):
        mask[i, n:] = 0
    logps = -torch.rand(batch, length, generator=g) * 3
    return {
        "prompt_ids": torch.randint(3, 50, (batch, 3), generator=g),
        "prompt_mask": torch.ones(batch, 3, dtype=torch.long),
        "completion_ids": torch.randint(3, 50, (batch, length), generator=g),
        "completion_mask": mask,
        "advantages": torch.randn(batch, generator=g),
        "old_per_token_logps": logps + 0.3 * torch.randn(batch, length, generator=g),
        "ref_per_token_logps": logps + 0.2 * torch.randn(batch, length, generator=g),
        "num_items_in_batch": mask.sum(),
        "_policy": logps,
        "_entropy": torch.rand(batch, length, generator=g) * 4,
    }


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("with_old", [False, True], ids=["mu1", "mu2"])
def test_loss_gradient_and_metrics_equal_trl(trl_trainer, monkeypatch, loss_type, beta, with_old) -> None:
    trainer = trl_trainer
    for name, value in dict(loss_type=loss_type, beta=beta, epsilon_low=0.2, epsilon_high=0.28).items():
        monkeypatch.setattr(trainer, name, value)
    inputs = _loss_inputs(seed=hash((loss_type, beta, with_old)) % 1000)
    policy, entropy = inputs.pop("_policy"), inputs.pop("_entropy")
    if not with_old:
        inputs.pop("old_per_token_logps")
    theirs_logps = policy.clone().requires_grad_(True)
    monkeypatch.setattr(
        trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: (theirs_logps, entropy, None)
    )
    trainer._metrics["train"].clear()
    their_loss = trainer._compute_loss(trainer.model, inputs)
    their_loss.backward()
    theirs = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    ours_logps = policy.clone().requires_grad_(True)
    settings = LossSettings(loss_type, beta, 0.2, 0.28, MAX_LEN)
    loss, metrics = grpo_loss(
        ours_logps,
        inputs.get("old_per_token_logps"),
        inputs["ref_per_token_logps"],
        inputs["advantages"],
        inputs["completion_mask"],
        settings,
        token_normalizer=inputs["num_items_in_batch"].float(),
        entropies=entropy,
    )
    loss.backward()
    assert torch.allclose(loss, their_loss, atol=TOL), (float(loss), float(their_loss))
    assert torch.allclose(ours_logps.grad, theirs_logps.grad, atol=TOL)
    expected = [m for m in LOSS_METRICS if beta or m != "kl"]
    assert sorted(theirs) == sorted(expected) == sorted(metrics)
    for name in expected:
        assert abs(float(metrics[name]) - theirs[name]) < TOL, name


def _completions(tokenizer, texts: list[str], eos_at: set[int]) -> generation.Completions:
    rows = [
        tokenizer.encode(t) + ([tokenizer.eos_token_id] if i in eos_at else []) for i, t in enumerate(texts)
    ]
    ids, mask = (
        torch.zeros(len(rows), MAX_LEN, dtype=torch.long),
        torch.zeros(len(rows), MAX_LEN, dtype=torch.long),
    )
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return generation.Completions(
        [i // G for i in range(len(rows))],
        ids,
        mask,
        torch.tensor([i not in eos_at for i in range(len(rows))]),
        texts,
    )


# group 0: rewards vary; group 1: every completion the same ("a"), so exact_a's std is 0 there
TEXTS = ["a", "b", "aa", "a ", "a", "a", "a", "a"]
EOS_AT = {0, 2, 4, 5, 6}


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_and_reward_metrics_equal_trl(tmp_path, monkeypatch, scale_rewards) -> None:
    tokenizer = tiny_tokenizer()
    trainer = _trl_trainer(tmp_path, scale_rewards=scale_rewards)
    prompts = ["say a", "say the letter"]
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    out = _completions(tokenizer, TEXTS, EOS_AT)
    completion_ids = out.ids()

    def their_generate(prompts_in):
        return (
            [prompt_ids[i // G] for i in range(len(TEXTS))],
            completion_ids,
            None,
            TEXTS,
            None,
            {},
            None,
            [],
        )

    trainer._generate = their_generate
    trainer._metrics["train"].clear()
    rows = [{"prompt": prompts[i // G], "answer": "a"} for i in range(len(TEXTS))]
    their = trainer._generate_and_score_completions(rows)
    theirs = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    monkeypatch.setattr(generation, "generate_completions", lambda *a, **k: out)
    cfg = GrpoConfig(num_generations=G, max_completion_length=MAX_LEN, scale_rewards=scale_rewards)
    scorer = ToyScorer(REWARDS)
    ours = GRPO(cfg, REWARDS, scorer, tokenizer=tokenizer)
    batch = ours.collator(0)(
        [
            {"prompt_ids": p, "prompt": t, "answer": "a", "source": i}
            for i, (p, t) in enumerate(zip(prompt_ids, prompts))
        ]
    )
    [prepared] = ours.prepare_window(tiny_llama(), [batch], None, step=0)
    assert torch.allclose(prepared["advantages"], their["advantages"], atol=TOL)
    width = their["completion_mask"].size(1)  # TRL pads to the longest completion, we to what generate gave
    assert not prepared["completion_mask"][:, width:].any()
    assert torch.equal(prepared["completion_mask"][:, :width], their["completion_mask"])
    ours_ids = (prepared["completion_ids"] * prepared["completion_mask"])[:, :width]
    assert torch.equal(ours_ids, their["completion_ids"] * their["completion_mask"])
    assert scorer.calls[0]["columns"] == {"answer": ["a"] * 8}
    assert scorer.calls[0]["row_ids"] == [0] * G + [1] * G
    metrics = prepared["generation_metrics"]
    for name, value in theirs.items():
        if name == "num_tokens":
            continue
        assert name in metrics, name
        assert abs(float(metrics[name]) - value) < TOL or (value != value and metrics[name].isnan()), name


def test_completion_logps_equal_trl(trl_trainer) -> None:
    trainer = trl_trainer
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 200, (3, 4), generator=g)
    completion_ids = torch.randint(3, 200, (3, 5), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    prompt_mask = torch.ones_like(prompt_ids)
    theirs, their_entropy, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([prompt_ids, completion_ids], 1),
        torch.cat([prompt_mask, completion_mask], 1),
        5,
        compute_entropy=True,
    )
    with torch.no_grad():
        ours, entropy = completion_logps(
            trainer.model, prompt_ids, prompt_mask, completion_ids, completion_mask, 0.7, with_entropy=True
        )
    mask = completion_mask.bool()
    assert torch.allclose(ours[mask], theirs.detach()[mask], atol=TOL)
    assert torch.allclose(entropy[mask], their_entropy.detach()[mask], atol=TOL)
