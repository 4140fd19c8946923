"""DoRA, PiSSA and OLoRA against HuggingFace peft (the oracle): same weights -> same logits and trainable
counts, same initialisation, merge/unmerge, checkpoints both ways, and PiSSA/OLoRA saved as a plain LoRA that
peft loads on the ORIGINAL base with the trained model's logits."""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from peft_framework.adapters import get_adapter
from peft_framework.adapters.checkpoint import load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraLinear, LoraMethod, fast
from peft_framework.errors import AdapterError
from tiny_models import tiny_gpt2, tiny_llama

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


_BASES = {"llama": tiny_llama(hidden=64), "gpt2": tiny_gpt2()}  # the shared factories (tests/tiny_models.py)


def base(kind: str) -> torch.nn.Module:
    return copy.deepcopy(_BASES[kind])


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=tokens()).logits


def n_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def perturb_trainables(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Add noise to every trainable tensor (as training would), so adapters and B are non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters()):
        if param.requires_grad:
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def peft_config(cfg: LoraConfig) -> peft.LoraConfig:
    init = {"kaiming": True, "gaussian": "gaussian"}.get(cfg.init, cfg.init)
    return peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        use_rslora=cfg.use_rslora,
        target_modules=cfg.target_modules,
        use_dora=cfg.use_dora,
        init_lora_weights=init,
        bias=cfg.bias,
    )


DORA_CASES = {
    "llama-qv": ("llama", LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True)),
    "llama-mlp-rslora": (
        "llama",
        LoraConfig(r=8, alpha=16, target_modules=["up_proj", "down_proj"], use_rslora=True, use_dora=True),
    ),
    "gpt2-conv1d-bias": ("gpt2", LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_fc"], use_dora=True)),
}


def dora_pair(kind: str, cfg: LoraConfig):
    ours = base(kind)
    get_adapter("lora").inject(ours, cfg)
    theirs = peft.get_peft_model(base(kind), peft_config(cfg)).eval()
    perturb_trainables(theirs)
    LoraMethod().load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    return theirs, ours


# ------------------------------------------------------------------------------------------------ DoRA
@pytest.mark.parametrize("case", sorted(DORA_CASES))
def test_dora_logits_counts_and_keys_equal_peft(case: str) -> None:
    kind, cfg = DORA_CASES[case]
    theirs, ours = dora_pair(kind, cfg)
    assert n_trainable(ours) == n_trainable(theirs)
    assert set(LoraMethod().adapter_state_dict(ours)) == set(get_peft_model_state_dict(theirs))
    expected = logits(theirs)
    torch.testing.assert_close(logits(ours), expected, atol=TOL, rtol=0)  # fused path
    previous = fast.configure(fused=False)
    try:
        torch.testing.assert_close(logits(ours), expected, atol=TOL, rtol=0)  # reference formula
    finally:
        fast.configure(**previous)


def test_dora_magnitude_starts_at_the_weight_norm_like_peft() -> None:
    cfg = DORA_CASES["gpt2-conv1d-bias"][1]
    ours = base("gpt2")
    get_adapter("lora").inject(ours, cfg)
    theirs = peft.get_peft_model(base("gpt2"), peft_config(cfg))
    mags = {k: v for k, v in get_peft_model_state_dict(theirs).items() if "magnitude" in k}
    got = LoraMethod().adapter_state_dict(ours)
    assert mags and all(torch.equal(got[k], v) for k, v in mags.items())
    torch.testing.assert_close(logits(ours), logits(base("gpt2")), atol=TOL, rtol=0)  # starts as the base


@pytest.mark.parametrize("case", ["llama-qv", "gpt2-conv1d-bias"])
def test_dora_fused_gradients_equal_the_reference_formula(case: str) -> None:
    kind, cfg = DORA_CASES[case]
    _, ours = dora_pair(kind, cfg)
    ours.train()

    def grads() -> dict[str, torch.Tensor]:
        ours.zero_grad()
        torch.manual_seed(0)  # GPT-2's own dropouts draw the same masks on both paths
        x = tokens(3)
        ours(input_ids=x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in ours.named_parameters() if p.requires_grad}

    fused = grads()
    previous = fast.configure(fused=False)
    try:
        reference = grads()
    finally:
        fast.configure(**previous)
    assert any("lora_magnitude_vector" in n for n in fused)
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["llama-qv", "gpt2-conv1d-bias"])
def test_dora_merge_matches_peft_and_unmerge_restores(case: str) -> None:
    kind, cfg = DORA_CASES[case]
    theirs, ours = dora_pair(kind, cfg)
    before = {n: p.clone() for n, p in ours.named_parameters()}
    unmerged = logits(ours)
    get_adapter("lora").merge(ours)
    torch.testing.assert_close(logits(ours), unmerged, atol=TOL, rtol=0)
    merged_theirs = theirs.merge_and_unload()
    merged_ours = get_adapter("lora").unload(copy.deepcopy(ours))
    for (n, a), (_, b) in zip(
        sorted(merged_ours.state_dict().items()), sorted(merged_theirs.state_dict().items())
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=n)
    get_adapter("lora").unmerge(ours)
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-6, rtol=0)


def test_dora_checkpoints_load_both_ways(tmp_path: Path) -> None:
    kind, cfg = DORA_CASES["llama-qv"]
    theirs, ours = dora_pair(kind, cfg)
    expected = logits(theirs)
    save_adapter(
        ours, LoraMethod(), cfg, tmp_path / "ours", base_model_name_or_path=None, task_type="causal_lm"
    )
    loaded = peft.PeftModel.from_pretrained(base(kind), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(loaded), expected, atol=TOL, rtol=0)
    theirs.save_pretrained(tmp_path / "peft")
    mine = base(kind)
    _, loaded_cfg = load_adapter(mine, tmp_path / "peft")
    assert loaded_cfg.use_dora
    torch.testing.assert_close(logits(mine), expected, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------- PiSSA / OLoRA
INIT_CASES = {
    "pissa": LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init="pissa"),
    "pissa_niter_2": LoraConfig(r=4, alpha=4, target_modules=["q_proj", "up_proj"], init="pissa_niter_2"),
    "olora": LoraConfig(r=8, alpha=16, target_modules=["k_proj", "o_proj"], init="olora", use_rslora=True),
}


def init_pair(init: str):
    """Ours and peft's from the same base and the same global seed."""
    cfg = INIT_CASES[init]
    torch.manual_seed(123)
    ours = base("llama")
    get_adapter("lora").inject(ours, cfg)
    torch.manual_seed(123)
    theirs = peft.get_peft_model(base("llama"), peft_config(cfg)).eval()
    return cfg, theirs, ours


@pytest.mark.parametrize("init", sorted(INIT_CASES))
def test_base_weight_inits_equal_peft_and_keep_the_model(init: str) -> None:
    _, theirs, ours = init_pair(init)
    theirs_sd = {k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()}
    ours_sd = ours.state_dict()
    assert set(ours_sd) == set(theirs_sd)
    for key, value in ours_sd.items():  # A, B and the residual base weights
        torch.testing.assert_close(value, theirs_sd[key], atol=1e-6, rtol=0, msg=key)
    proj = INIT_CASES[init].target_modules[0]
    key = f"model.layers.0.self_attn.{proj}.weight"
    residual = ours_sd[key.replace(".weight", ".base_layer.weight")]
    assert not torch.allclose(residual, base("llama").state_dict()[key], atol=1e-3)
    torch.testing.assert_close(logits(ours), logits(base("llama")), atol=1e-4, rtol=0)


@pytest.mark.parametrize("init", sorted(INIT_CASES))
def test_base_weight_inits_save_a_plain_lora_for_the_original_base(init: str, tmp_path: Path) -> None:
    cfg, theirs, ours = init_pair(init)
    # peft's own conversion: the initial adapter saved as plain LoRA first, then the trained one against it
    theirs.peft_config["default"].init_lora_weights = True
    theirs.save_pretrained(tmp_path / "peft_init")
    theirs.peft_config["default"].init_lora_weights = peft_config(cfg).init_lora_weights
    perturb_trainables(theirs)
    perturb_trainables(ours)
    trained = logits(ours)
    theirs.save_pretrained(
        tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "peft_init")
    )

    save_adapter(
        ours, LoraMethod(), cfg, tmp_path / "ours", base_model_name_or_path=None, task_type="causal_lm"
    )
    saved = load_file(str(tmp_path / "ours" / "adapter_model.safetensors"))
    reference = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert set(saved) == set(reference)
    for key in saved:
        torch.testing.assert_close(saved[key], reference[key], atol=1e-6, rtol=0, msg=key)

    original = base("llama")
    loaded = peft.PeftModel.from_pretrained(original, tmp_path / "ours").eval()
    assert loaded.peft_config["default"].r == 2 * cfg.r
    torch.testing.assert_close(logits(loaded), trained, atol=1e-4, rtol=0)
    mine = base("llama")
    load_adapter(mine, tmp_path / "ours")
    torch.testing.assert_close(logits(mine), trained, atol=1e-4, rtol=0)
    get_adapter("lora").merge(mine)  # export's merge: into the original weights
    torch.testing.assert_close(logits(get_adapter("lora").unload(mine)), trained, atol=1e-4, rtol=0)


def test_base_weight_init_layers_hold_no_second_adapter_and_give_the_weight_back() -> None:
    _, _, ours = init_pair("pissa")
    with pytest.raises(AdapterError, match="residual"):
        get_adapter("lora").inject(ours, LoraConfig(r=2, target_modules=["q_proj"]), "other")
    restored = get_adapter("lora").unload(ours)
    for key, value in base("llama").state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, atol=1e-5, rtol=0, msg=key)
    assert not any(isinstance(m, LoraLinear) for m in restored.modules())


def test_unsupported_init_and_combinations_are_config_errors() -> None:
    with pytest.raises(ValueError, match="pissa_niter_N"):
        LoraConfig(init="pissa_niter_0")
    with pytest.raises(ValueError, match="use_dora"):
        LoraConfig(init="olora", use_dora=True)
