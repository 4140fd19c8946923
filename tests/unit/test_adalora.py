"""AdaLoRA against HuggingFace peft (the oracle, test-only): same weights -> same logits, same trainable
parameters, checkpoints both ways, and the rank allocator step for step (same masks, same rank pattern,
same weights after training); merge/unmerge; the saved rank pattern reloads (here and in peft)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import tiny_models as tiny
from peft_framework.adapters import get_adapter, load_adapter, registry, save_adapter
from peft_framework.adapters.adalora import AdaLoraConfig, AdaLoraMethod, SVDLinear
from peft_framework.errors import AdapterError, ConfigError
from tiny_models import base as tiny_base
from tiny_models import logits, n_trainable, tokens

TOL = 1e-5


#: our config and the matching peft settings per model
CASES = {
    "llama": (
        AdaLoraConfig(init_r=4, target_r=2, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
        dict(target_modules=["q_proj", "v_proj", "down_proj"]),
    ),
    "gpt2": (
        AdaLoraConfig(init_r=4, target_r=2, alpha=6, target_modules=None),  # peft's default: c_attn
        dict(target_modules=None),
    ),
}


def base(kind: str = "llama") -> torch.nn.Module:
    return tiny_base(kind)


def peft_model(kind: str, cfg: AdaLoraConfig, **extra) -> peft.PeftModel:
    settings = dict(
        init_r=cfg.init_r,
        target_r=cfg.target_r,
        lora_alpha=cfg.alpha,
        tinit=cfg.tinit,
        tfinal=cfg.tfinal,
        deltaT=cfg.deltaT,
        beta1=cfg.beta1,
        beta2=cfg.beta2,
        orth_reg_weight=cfg.orth_reg_weight,
        total_step=cfg.total_step or 10,
        task_type="CAUSAL_LM",
        **CASES[kind][1],
    )
    settings.update(extra)
    return peft.get_peft_model(base(kind), peft.AdaLoraConfig(**settings))


def randomize_trainables(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (E starts at zero: a fresh adapter would compute nothing)."""
    tiny.randomize_trainables(model, seed, std=0.3)


def ours_from(theirs: peft.PeftModel, kind: str, cfg: AdaLoraConfig) -> torch.nn.Module:
    model = base(kind)
    get_adapter("adalora").inject(model, cfg)
    get_adapter("adalora").load_adapter_state_dict(model, get_peft_model_state_dict(theirs))
    return model


def save(model: torch.nn.Module, cfg: AdaLoraConfig, out: Path) -> Path:
    return save_adapter(
        model, get_adapter("adalora"), cfg, out, base_model_name_or_path="tiny", task_type="causal_lm"
    )


def test_registered() -> None:
    assert "adalora" in registry.available()
    method = registry.get("adalora")
    assert isinstance(method, AdaLoraMethod) and method.peft_type == "ADALORA" and method.mergeable
    assert registry.by_peft_type("ADALORA") is method


@pytest.mark.parametrize("kind", list(CASES))
def test_same_weights_same_logits_and_trainable_count_as_peft(kind: str) -> None:
    cfg = CASES[kind][0]
    theirs = peft_model(kind, cfg)
    ours = base(kind)
    get_adapter("adalora").inject(ours, cfg)
    assert n_trainable(ours) == theirs.get_nb_trainable_parameters()[0]
    assert torch.equal(logits(ours), logits(base(kind)))  # E = 0: a fresh adapter changes nothing
    randomize_trainables(theirs)
    ours = ours_from(theirs, kind, cfg)
    diff = (logits(ours) - logits(theirs.eval())).abs().max().item()
    assert diff <= TOL, diff
    assert (logits(ours) - logits(base(kind))).abs().max().item() > 1e-3
    if kind == "gpt2":
        assert (
            isinstance(ours.transformer.h[0].attn.c_attn, SVDLinear)
            and ours.transformer.h[0].attn.c_attn.fan_in_fan_out
        )


@pytest.mark.parametrize("kind", list(CASES))
def test_checkpoints_load_both_ways(kind: str, tmp_path: Path) -> None:
    cfg = CASES[kind][0]
    theirs = peft_model(kind, cfg)
    randomize_trainables(theirs, seed=3)
    ours = ours_from(theirs, kind, cfg)
    # ours -> peft
    out = save(ours, cfg, tmp_path / "ours")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "ADALORA" and saved["init_r"] == 4 and saved["total_step"] >= 1
    assert set(saved) <= {f for f in peft.AdaLoraConfig.__dataclass_fields__}
    loaded = peft.PeftModel.from_pretrained(base(kind), out).eval()
    assert (logits(loaded) - logits(ours)).abs().max().item() <= TOL
    # peft -> ours
    theirs.save_pretrained(tmp_path / "peft")
    fresh = base(kind)
    method, loaded_cfg = load_adapter(fresh, tmp_path / "peft")
    assert method.name == "adalora" and loaded_cfg.init_r == 4 and loaded_cfg.alpha == cfg.alpha
    assert (logits(fresh) - logits(theirs.eval())).abs().max().item() <= TOL


def test_extra_loss_is_peft_s_orthogonal_regulariser() -> None:
    cfg = CASES["llama"][0]
    theirs = peft_model("llama", cfg)
    randomize_trainables(theirs, seed=5)
    ours = ours_from(theirs, "llama", cfg)
    x = tokens()
    with torch.no_grad():
        peft_loss = theirs(input_ids=x, labels=x).loss  # peft adds orth_reg_weight * regulariser itself
        plain = ours(input_ids=x, labels=x).loss
        extra = get_adapter("adalora").extra_loss(ours)
    assert extra is not None and extra.item() > 0
    assert abs((plain + extra).item() - peft_loss.item()) <= 1e-5


def _train_side_by_side(cfg: AdaLoraConfig, steps: int) -> tuple[peft.PeftModel, torch.nn.Module]:
    """Train peft's and our AdaLoRA from the same weights on the same batches: peft the documented way
    (update_and_allocate after optimizer.step), ours through the Trainer callback's allocator."""
    theirs = peft_model("llama", cfg, total_step=cfg.total_step)
    ours = ours_from(theirs, "llama", cfg)
    method = get_adapter("adalora")
    (callback,) = method.training_callbacks(ours, cfg, total_steps=999)  # cfg.total_step wins over the run's
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    theirs.train()
    ours.train()
    for step in range(steps):
        x = tokens(seed=100 + step, shape=(2, 16))
        theirs(input_ids=x, labels=x).loss.backward()
        opt_theirs.step()
        theirs.base_model.update_and_allocate(step)
        opt_theirs.zero_grad()
        (ours(input_ids=x, labels=x).loss + method.extra_loss(ours)).backward()
        opt_ours.step()
        callback.on_optimizer_step(None, type("S", (), {"global_step": step})(), None)
        opt_ours.zero_grad()
    return theirs.eval(), ours.eval()


def test_rank_allocator_matches_peft_and_reaches_the_target_budget(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = AdaLoraConfig(
        init_r=4,
        target_r=2,
        alpha=8,
        tinit=1,
        tfinal=2,
        total_step=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )
    theirs, ours = _train_side_by_side(cfg, steps=8)
    record = AdaLoraMethod().record(ours, "default")
    n_modules = len(record.targets)
    assert n_modules == 6
    # after tfinal: the budget is target_r x modules, and peft chose exactly the same triplets
    assert record.budget == cfg.target_r * n_modules
    assert sum(sum(mask) for mask in record.rank_pattern.values()) == cfg.target_r * n_modules
    peft_pattern = {
        k.replace(".lora_E.default", ""): v for k, v in theirs.peft_config["default"].rank_pattern.items()
    }
    assert peft_pattern == record.rank_pattern
    assert (logits(ours) - logits(theirs)).abs().max().item() <= TOL
    for path, mask in record.rank_pattern.items():  # masked triplets are dead
        e = ours.get_submodule(path).lora_E["default"].detach().view(-1)
        assert all(float(e[i]) == 0.0 for i, keep in enumerate(mask) if not keep)

    # saved: tensors cut to the kept ranks, the pattern in adapter_config.json, and it reloads
    out = save(ours, cfg, tmp_path / "ada")
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == {f"{p}.lora_E": m for p, m in record.rank_pattern.items()}
    assert saved["total_step"] == 8
    tensors = load_file(str(out / "adapter_model.safetensors"))
    for path, mask in record.rank_pattern.items():
        key = f"base_model.model.{path}"
        assert tensors[f"{key}.lora_A"].shape[0] == sum(mask) == tensors[f"{key}.lora_B"].shape[1]
    theirs.save_pretrained(tmp_path / "peft")
    peft_tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert {k: tuple(v.shape) for k, v in peft_tensors.items()} == {
        k: tuple(v.shape) for k, v in tensors.items()
    }

    fresh = base("llama")
    _, loaded_cfg = load_adapter(fresh, out)
    assert loaded_cfg.rank_pattern == saved["rank_pattern"]
    layer = fresh.model.layers[0].self_attn.q_proj
    assert layer.r["default"] == sum(record.rank_pattern["model.layers.0.self_attn.q_proj"])
    assert layer.ranknum["default"] == cfg.init_r  # scaling keeps init_r, as in peft
    assert (logits(fresh) - logits(ours)).abs().max().item() <= TOL
    get_adapter("adalora").merge(fresh)  # a pruned adapter merges too
    assert (logits(fresh) - logits(ours)).abs().max().item() <= TOL
    in_peft = peft.PeftModel.from_pretrained(base("llama"), out).eval()
    assert (logits(in_peft) - logits(ours)).abs().max().item() <= TOL
    # peft's own pruned checkpoint loads here too
    from_peft = base("llama")
    load_adapter(from_peft, tmp_path / "peft")
    assert (logits(from_peft) - logits(theirs)).abs().max().item() <= TOL

    # Trainer resume: a cut checkpoint goes back into a full-size adapter, computing the same thing
    resumed = base("llama")
    method = get_adapter("adalora")
    method.inject(resumed, cfg)
    method.load_adapter_state_dict(resumed, tensors)
    assert (logits(resumed) - logits(ours)).abs().max().item() <= TOL
    assert resumed.model.layers[0].self_attn.q_proj.r["default"] == cfg.init_r
    kept = AdaLoraMethod().record(resumed, "default").rank_pattern
    assert {p: sum(m) for p, m in kept.items()} == {p: sum(m) for p, m in record.rank_pattern.items()}


def test_budget_schedule_is_peft_s_cubic_schedule() -> None:
    from peft.tuners.adalora.layer import RankAllocator as PeftAllocator

    from peft_framework.adapters.adalora.allocator import RankAllocator

    cfg = AdaLoraConfig(
        init_r=6, target_r=2, tinit=3, tfinal=4, deltaT=2, total_step=30, target_modules=["q_proj"]
    )
    theirs = peft_model("llama", cfg, target_modules=["q_proj"], total_step=30)
    ours = base("llama")
    get_adapter("adalora").inject(ours, cfg)
    mine = RankAllocator(ours, "default", total_step=30)
    reference = PeftAllocator(theirs.base_model.model, theirs.peft_config["default"], "default")
    assert (mine.init_bgt, mine.target_bgt) == (reference.init_bgt, reference.target_bgt) == (12, 4)
    for step in range(32):
        assert mine.budget_schedule(step) == reference.budget_schedule(step), step


@pytest.mark.parametrize("kind", list(CASES))
def test_merge_and_unmerge(kind: str) -> None:
    cfg = CASES[kind][0]
    theirs = peft_model(kind, cfg)
    randomize_trainables(theirs, seed=7)
    ours = ours_from(theirs, kind, cfg)
    before = logits(ours)
    method = get_adapter("adalora")
    method.merge(ours)
    assert (logits(ours) - before).abs().max().item() <= TOL
    with pytest.raises(AdapterError, match="already merged"):
        method.merge(ours)
    method.unmerge(ours)
    assert (logits(ours) - before).abs().max().item() <= TOL
    method.merge(ours)
    plain = method.unload(ours)
    assert not any(isinstance(m, SVDLinear) for m in plain.modules())
    assert (logits(plain) - before).abs().max().item() <= TOL


def test_set_active_none_is_the_base_model() -> None:
    cfg = CASES["llama"][0]
    model = base()
    method = get_adapter("adalora")
    method.inject(model, cfg)
    randomize_trainables(model)
    method.set_active(model, None)
    assert torch.equal(logits(model), logits(base()))
    assert method.extra_loss(model) is None
    method.set_active(model, "default")
    assert not torch.equal(logits(model), logits(base()))
    with pytest.raises(AdapterError, match="no AdaLoRA adapter named 'nope'"):
        method.set_active(model, "nope")


def test_training_callbacks_fill_total_step_from_the_run() -> None:
    cfg = AdaLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=3, target_modules=["q_proj"])
    model = base()
    method = get_adapter("adalora")
    method.inject(model, cfg)
    (callback,) = method.training_callbacks(model, cfg, total_steps=20)
    assert callback.allocator.total_step == 20
    assert method.saved_config(cfg, model=model)["total_step"] == 20
    with pytest.raises(
        ConfigError, match=r"adapter.tinit \+ adapter.tfinal \(2 \+ 3\).*optimizer steps \(5\)"
    ):
        method.training_callbacks(model, cfg, total_steps=5)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(init_r=4, target_r=6), "target_r: 6 is larger than adapter.init_r"),
        (dict(tinit=5, tfinal=5, total_step=10), "leaves no budgeting phase"),
        (
            dict(init_r=3, rank_pattern={"model.layers.0.self_attn.q_proj.lora_E": [True, False]}),
            "exactly init_r",
        ),
    ],
)
def test_config_errors_name_the_key(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaLoraConfig(**fields)


def test_unknown_architecture_without_target_modules_is_a_clear_error() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(AdapterError, match="null has no default for model type None"):
        get_adapter("adalora").inject(Tiny(), AdaLoraConfig())


def test_a_module_pruned_to_rank_zero_saves_and_loads_like_peft(tmp_path: Path) -> None:
    """peft writes 0-row tensors for a module that lost every rank; both sides must read and write that."""
    cfg = AdaLoraConfig(init_r=3, target_r=1, alpha=8, total_step=10, target_modules=["q_proj", "v_proj"])
    theirs = peft_model("llama", cfg, target_modules=["q_proj", "v_proj"])
    randomize_trainables(theirs, seed=11)
    ours = ours_from(theirs, "llama", cfg)
    record = AdaLoraMethod().record(ours, "default")
    record.rank_pattern = {path: [True, False, True] for path in record.targets}
    record.rank_pattern["model.layers.1.self_attn.v_proj"] = [False, False, False]
    from peft_framework.adapters.adalora.allocator import RankAllocator

    RankAllocator(ours, "default", total_step=10).mask_using_rank_pattern(record.rank_pattern)
    out = save(ours, cfg, tmp_path / "ada")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A"].shape == (0, 32)
    in_peft = peft.PeftModel.from_pretrained(base("llama"), out).eval()
    assert (logits(in_peft) - logits(ours)).abs().max().item() <= TOL
    fresh = base("llama")
    load_adapter(fresh, out)
    assert fresh.model.layers[1].self_attn.v_proj.r["default"] == 0
    assert (logits(fresh) - logits(ours)).abs().max().item() <= TOL
