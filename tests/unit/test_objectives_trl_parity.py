"""Preference objectives against TRL 1.16 (the oracle), on the same tiny Llama, LoRA weights and batch.

TRL side, with its own trainers built on a peft `PeftModel` (which switches the adapter off for the reference):
- dpo (label_smoothing 0), ipo: `trl.DPOTrainer.compute_loss` (loss_type sigmoid / ipo), metrics from its
  `_metrics["train"]`;
- kto: `trl.KTOTrainer.compute_loss` (loss_type kto, KL pairs included), `_metrics["train"]`;
- orpo: `trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics`;
- simpo: `trl.experimental.cpo.CPOTrainer.get_batch_loss_metrics` (loss_type simpo, cpo_alpha 0);
- cDPO (dpo with label_smoothing > 0; TRL 1.16's DPO sigmoid loss has no smoothing): the smoothed sigmoid of
  `CPOTrainer.cpo_loss` (loss_type sigmoid) on our DPO log-ratios.
Ours: the objective's `compute_loss` on our LoRA, the reference from `as_reference` (adapter off).
Both sides take the same SGD steps with dropout off; loss, rewards and log-probs must agree within 1e-5 at
every step, so the gradients agree too.
"""

from __future__ import annotations

import copy
import functools
import types

import datasets
import peft
import pytest
import torch

from peft_framework.adapters import get_adapter
from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.models.tiny import tiny_tokenizer
from peft_framework.training.objectives import kto as kto_module
from peft_framework.training.objectives import pairwise
from peft_framework.training.objectives.base import as_reference
from preference_fixtures import PEFT_LORA, _load, _models, _pair_features, _rows

trl = pytest.importorskip("trl")

STEPS = 3
LR = 0.5
TOL = 1e-5
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def _trl_trainer(kind: str, model, tmp_path, peft_config=None, **settings):
    """TRL's trainer for `kind`: on `model` with `peft_config` (a new adapter: the reference is the adapter off),
    or on a PeftModel (an existing adapter: TRL copies it into a frozen "ref" adapter, its reference)."""
    common = dict(
        output_dir=str(tmp_path / kind),
        report_to=[],
        per_device_train_batch_size=2,
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
    )
    if kind == "kto":
        data = datasets.Dataset.from_dict(
            {"prompt": ["a", "b"], "completion": ["x", "y"], "label": [True, False]}
        )
    else:
        data = datasets.Dataset.from_dict(
            {"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", "w"]}
        )
    tok = tiny_tokenizer()
    if kind in ("dpo", "ipo"):
        args = trl.DPOConfig(loss_type=[settings.pop("loss_type")], max_length=None, **settings, **common)
        return trl.DPOTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config
        )
    if kind == "kto":
        args = trl.KTOConfig(**settings, **common)
        return trl.KTOTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config
        )
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**settings, **common)
        return ORPOTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config
        )
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(loss_type="simpo", cpo_alpha=0.0, **settings, **common)
    return CPOTrainer(
        model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft_config
    )


def _trl_step(kind: str, trainer, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    if kind in ("orpo", "simpo"):
        n = batch["input_ids"].size(0) // 2
        split = {}
        for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
            split[f"{side}_input_ids"] = batch["input_ids"][rows]
            split[f"{side}_attention_mask"] = batch["attention_mask"][rows]
            split[f"{side}_labels"] = batch["labels"][rows]
        return trainer.get_batch_loss_metrics(trainer.model, split)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != -100).long(),
    }
    if kind == "kto":
        inputs["label"] = batch["label"]
        inputs["KL_input_ids"] = batch["KL_input_ids"]
        inputs["KL_attention_mask"] = batch["KL_attention_mask"]
        inputs["KL_completion_mask"] = (batch["KL_labels"] != -100).long()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


CASES = {
    "dpo": (pairwise.DPO(beta=0.1), dict(loss_type="sigmoid", beta=0.1)),
    "ipo": (pairwise.IPO(beta=0.1), dict(loss_type="ipo", beta=0.1)),
    "orpo": (pairwise.ORPO(orpo_lambda=0.1), dict(beta=0.1)),
    "simpo": (pairwise.SimPO(beta=2.0, gamma=0.5), dict(beta=2.0, simpo_gamma=0.5)),
    "kto": (
        kto_module.KTO(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5),
        dict(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5),
    ),
}


def _batch(kind: str, objective) -> dict:
    if kind != "kto":
        return objective.collator(0)(_pair_features())
    rows = _rows(4, 3)
    features = [
        {"input_ids": p + a, "labels": [-100] * len(p) + a, "label": i % 2 == 0}
        for i, (p, a) in enumerate(rows)
    ]
    return objective.collator(0)(features)


def _compare_over_steps(kind: str, objective, ours, reference, trainer) -> dict:
    theirs = trainer.model
    ours.train()
    theirs.train()
    opt_ours = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=LR)
    opt_theirs = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=LR)
    assert len(opt_ours.param_groups[0]["params"]) == len(opt_theirs.param_groups[0]["params"])
    batch = _batch(kind, objective)
    names = [
        *METRICS,
        *(("kl",) if kind == "kto" else ()),
        *(("nll_loss", "log_odds_ratio") if kind == "orpo" else ()),
    ]
    for step in range(STEPS):
        loss, metrics = objective.compute_loss(ours, batch, reference)
        trl_loss, trl_metrics = _trl_step(kind, trainer, batch)
        assert abs(float(loss) - float(trl_loss)) < TOL, (kind, step, float(loss), float(trl_loss))
        for name in names:
            if kind == "kto" and name == "rewards/accuracies":
                continue  # TRL's KTO does not log it
            assert abs(float(metrics[name]) - float(trl_metrics[name])) < TOL, (kind, step, name)
        for opt, value in ((opt_ours, loss), (opt_theirs, trl_loss)):
            opt.zero_grad()
            value.backward()
            opt.step()
    return metrics


@pytest.mark.parametrize("kind", list(CASES))
def test_loss_rewards_and_logps_equal_trl_over_steps(kind: str, tmp_path) -> None:
    """A new adapter: the reference is the base model (adapter off) on both sides."""
    objective, settings = CASES[kind]
    ours, base, state = _models()
    trainer = _trl_trainer(
        kind, copy.deepcopy(base), tmp_path, peft.LoraConfig(**PEFT_LORA), **dict(settings)
    )
    _load(trainer.model, state)
    reference = functools.partial(as_reference, ours, get_adapter("lora"), None)
    metrics = _compare_over_steps(kind, objective, ours, reference, trainer)
    if objective.needs_reference:  # random adapter weights: the policy differs from the base from step 1
        assert abs(float(metrics["rewards/chosen"])) > 1e-4


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_init_adapter_reference_equals_trl_ref_adapter(kind: str, tmp_path) -> None:
    """Training on from an adapter (train.init_adapter): the reference is base + a frozen copy of it, as TRL's
    "ref" adapter when it is given a PeftModel; step 1 then has zero rewards, later steps do not."""
    from peft_framework.training.stage import REFERENCE_ADAPTER, _frozen_reference

    objective, settings = CASES[kind]
    ours, base, state = _models()
    config = types.SimpleNamespace(
        adapter=LoraConfig(type="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    )
    assert (
        _frozen_reference(ours, get_adapter("lora"), config, objective, {"sha256": "x"}) == REFERENCE_ADAPTER
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**PEFT_LORA))
    _load(theirs, state)
    trainer = _trl_trainer(kind, theirs, tmp_path, **dict(settings))
    assert "ref" in trainer.model.peft_config
    reference = functools.partial(as_reference, ours, get_adapter("lora"), REFERENCE_ADAPTER)
    metrics = _compare_over_steps(kind, objective, ours, reference, trainer)
    assert abs(float(metrics["rewards/chosen"])) > 1e-4


def test_conservative_dpo_equals_trl_smoothed_sigmoid() -> None:
    from trl.experimental.cpo import CPOTrainer

    ours, _, _ = _models()
    objective = pairwise.DPO(beta=0.1, label_smoothing=0.2)
    batch = _batch("dpo", objective)
    reference = functools.partial(as_reference, ours, get_adapter("lora"), None)
    loss, _ = objective.compute_loss(ours, batch, reference)
    with torch.no_grad():
        logps = pairwise.sequence_logps(
            ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
        with reference():
            ref = pairwise.sequence_logps(
                ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                batch["labels"],
            )
    chosen_lr, rejected_lr = (logps - ref).chunk(2)
    fake = types.SimpleNamespace(
        alpha=0.0,
        beta=0.1,
        loss_type="sigmoid",
        label_smoothing=0.2,
        simpo_gamma=0.5,
        accelerator=types.SimpleNamespace(device="cpu"),
    )
    trl_losses, _, _ = CPOTrainer.cpo_loss(fake, chosen_lr, rejected_lr)
    assert abs(float(loss) - float(trl_losses.mean())) < TOL


def test_kto_kl_pairs_rotate_completions_by_one() -> None:
    batch = _batch("kto", kto_module.KTO())
    rows = _rows(4, 3)
    for i, (prompt, _) in enumerate(rows):
        completion = rows[i - 1][1]
        n = len(prompt) + len(completion)
        assert batch["KL_input_ids"][i, :n].tolist() == prompt + completion
        assert batch["KL_labels"][i, :n].tolist() == [-100] * len(prompt) + completion
