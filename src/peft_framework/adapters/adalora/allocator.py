"""AdaLoRA's importance-based rank allocator, run by the Trainer after every optimizer step.

Same algorithm and step semantics as peft's `RankAllocator` + `AdaLoraModel.update_and_allocate`:

- importance of every entry of P, Λ, Q: I = |p * grad|; sensitivity Ī = EMA_β1(I), uncertainty
  Ū = EMA_β2(|I - Ī|); score = Ī * Ū;
- score of triplet i: score(Λ_i) + mean of row i of P's scores + mean of column i of Q's scores;
- budget (total kept ranks): Σ init_r up to step `tinit`, then falls on a cubic schedule to
  target_r x #modules at step `total_step - tfinal`; every `deltaT` steps the triplets at or below the
  k-th lowest score are masked (Λ_i = 0), k = initial budget - budget;
- at step `total_step - tfinal` the final mask is fixed (and saved as `rank_pattern`), and re-applied after
  every later step so masked triplets stay dead.

`step` is the 0-based index of the optimizer step (the Trainer's `global_step` before it is incremented),
like the loop index in peft's examples. peft requires the user to call `update_and_allocate` by hand;
here `AdaLoraCallback` does it from `on_optimizer_step`, where gradients still exist (the Trainer zeroes
them right after).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from peft_framework.adapters.adalora.layer import SVDLinear
from peft_framework.adapters.adalora.method import KINDS, AdaLoraMethod


class RankAllocator:
    def __init__(self, model: nn.Module, adapter_name: str, total_step: int) -> None:
        self.model = model
        self.adapter_name = adapter_name
        self.record = AdaLoraMethod().record(model, adapter_name)
        cfg = self.record.config
        self.beta1, self.beta2 = cfg.beta1, cfg.beta2
        self.tinit, self.tfinal, self.deltaT = cfg.tinit, cfg.tfinal, cfg.deltaT
        self.total_step = total_step
        self.layers: dict[str, SVDLinear] = AdaLoraMethod().layers(model, adapter_name)
        self.init_bgt = sum(layer.r[adapter_name] for layer in self.layers.values())
        self.target_bgt = cfg.target_r * len(self.layers)
        self.reset_ipt()

    def reset_ipt(self) -> None:
        self.ipt: dict[tuple[str, str], torch.Tensor] = {}
        self.exp_avg_ipt: dict[tuple[str, str], torch.Tensor] = {}
        self.exp_avg_unc: dict[tuple[str, str], torch.Tensor] = {}

    def _params(self):
        for path, layer in self.layers.items():
            for kind in KINDS:
                yield (path, kind), getattr(layer, kind)[self.adapter_name]

    # --- schedule ---------------------------------------------------------------------------------
    def budget_schedule(self, step: int) -> tuple[int, bool]:
        if step <= self.tinit:
            return self.init_bgt, False
        if step > self.total_step - self.tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - self.tinit) / (self.total_step - self.tfinal - self.tinit)
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff**3) + self.target_bgt)
        return budget, step % self.deltaT == 0

    # --- importance -------------------------------------------------------------------------------
    @torch.no_grad()
    def update_ipt(self) -> None:
        for key, p in self._params():
            if key not in self.ipt or self.ipt[key].shape != p.shape:
                self.ipt[key] = torch.zeros_like(p)
                self.exp_avg_ipt[key] = torch.zeros_like(p)
                self.exp_avg_unc[key] = torch.zeros_like(p)
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            self.ipt[key] = (p * grad).abs().detach()
            self.exp_avg_ipt[key] = self.beta1 * self.exp_avg_ipt[key] + (1 - self.beta1) * self.ipt[key]
            self.exp_avg_unc[key] = (
                self.beta2 * self.exp_avg_unc[key]
                + (1 - self.beta2) * (self.ipt[key] - self.exp_avg_ipt[key]).abs()
            )

    def _score(self, path: str, kind: str) -> torch.Tensor:
        key = (path, kind)
        if key not in self.exp_avg_ipt:  # never updated (e.g. masking before any step): no information
            return torch.zeros_like(getattr(self.layers[path], kind)[self.adapter_name])
        return self.exp_avg_ipt[key] * self.exp_avg_unc[key]

    @torch.no_grad()
    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Per module: one score per rank (Λ entry + mean of P's row + mean of Q's column)."""
        scores = {}
        for path in self.layers:
            ipt_a = torch.mean(self._score(path, "lora_A"), dim=1, keepdim=True)
            ipt_b = torch.mean(self._score(path, "lora_B"), dim=0, keepdim=False).view(-1, 1)
            ipt_e = self._score(path, "lora_E")
            ipt_ab = torch.cat([ipt_a, ipt_b], dim=1).sum(dim=1, keepdim=False)
            scores[path] = (ipt_e.view(-1) + ipt_ab.view(-1)).view(-1, 1)
        return scores

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        scores = self.triplet_scores()
        k = self.init_bgt - budget
        pattern: dict[str, list[bool]] = {}
        if k <= 0:  # nothing to cut (e.g. target_r == init_r)
            for path, layer in self.layers.items():
                pattern[path] = [True] * layer.r[self.adapter_name]
            return pattern
        threshold = torch.kthvalue(torch.cat([s.view(-1) for s in scores.values()]), k=k)[0].item()
        for path, layer in self.layers.items():
            masked = scores[path] <= threshold
            layer.lora_E[self.adapter_name].masked_fill_(masked, 0.0)
            pattern[path] = (~masked).view(-1).tolist()
        return pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self, pattern: dict[str, list[bool]]) -> None:
        for path, layer in self.layers.items():
            e = layer.lora_E[self.adapter_name]
            keep = torch.tensor(pattern[path], dtype=torch.bool, device=e.device).unsqueeze(-1)
            e.masked_fill_(~keep, 0.0)

    # --- one optimizer step -----------------------------------------------------------------------
    def update_and_allocate(self, step: int) -> int:
        """Update importance and masks after optimizer step `step`; returns the current budget."""
        final = self.total_step - self.tfinal
        rec = self.record
        if step < final:
            self.update_ipt()
            budget, mask_ind = self.budget_schedule(step)
            if mask_ind:
                rec.rank_pattern = self.mask_to_budget(budget)
        elif step == final or rec.rank_pattern is None:  # fix the final pattern at the target budget
            budget = self.target_bgt
            rec.rank_pattern = self.mask_to_budget(budget)
            self.reset_ipt()
        else:
            budget = self.target_bgt
            self.mask_using_rank_pattern(rec.rank_pattern)
        rec.budget = budget
        return budget


class AdaLoraCallback(TrainerCallback):
    """Runs the rank allocator after each optimizer step (gradients are still there, zero_grad is next)."""

    def __init__(self, allocator: RankAllocator) -> None:
        self.allocator = allocator

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.allocator.update_and_allocate(state.global_step)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.allocator.record.budget is not None and "loss" in logs:
            logs["adalora_rank_budget"] = self.allocator.record.budget
        return control

    # --- step checkpoints: AdapterTrainer saves these tensors with every checkpoint and restores them on
    # resume. Without them a resumed run re-ranks from empty statistics and, past the final step, masks
    # every rank.
    _STATS = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        alloc, rec = self.allocator, self.allocator.record
        state: dict[str, torch.Tensor] = {}
        for stat in self._STATS:
            for (path, kind), tensor in getattr(alloc, stat).items():
                state[f"{stat}|{path}|{kind}"] = tensor
        for path, keep in (rec.rank_pattern or {}).items():
            state[f"rank_pattern|{path}"] = torch.tensor(keep, dtype=torch.bool)
        if rec.budget is not None:
            state["budget"] = torch.tensor(rec.budget)
        return state

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        alloc, rec = self.allocator, self.allocator.record
        alloc.reset_ipt()
        pattern: dict[str, list[bool]] = {}
        for key, tensor in state.items():
            group, _, rest = key.partition("|")
            if group in self._STATS:
                path, _, kind = rest.rpartition("|")
                getattr(alloc, group)[(path, kind)] = tensor.clone()
            elif group == "rank_pattern":
                pattern[rest] = tensor.tolist()
        rec.rank_pattern = pattern or None
        rec.budget = int(state["budget"]) if "budget" in state else None
