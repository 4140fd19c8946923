"""LoRA on every routed expert of an MoE model: this project vs HuggingFace peft's `target_parameters` vs the
frozen floor, one run, CPU.

Model: a Qwen3-MoE built from config (4 layers, hidden 256, 8 (--experts) routed experts of intermediate 512, top-2,
vocab 4000, transformers' default `grouped_mm` experts implementation), batch 8 x 128 tokens. Variants:

- floor: every weight frozen, no adapter, the embedding output requiring grad (backward through every
  block's activations, what any adapter's backward must do at least);
- ours: LoRA r=16, alpha 32 on `mlp.experts.gate_up_proj` and `mlp.experts.down_proj` (peft_framework);
- peft: `peft.LoraConfig(target_parameters=...)`, the same adapter (peft forms every expert's delta on each
  forward through torch.nn.utils.parametrize).

Step time: the three alternate step by step in a rotating order after warm-up steps, medians, and the median
of per-round ratios (the shared machine's speed drifts). Training-memory growth: each variant in a fresh
subprocess, the VmHWM high-water mark during the training steps over the RSS after the model was built
(VmHWM reset through /proc/self/clear_refs), as bench/train_throughput.py measures it.

    python bench/moe.py [--steps 12] [--threads 1] [--experts 8] [--json out.json]
    python bench/moe.py --qlora [--experts 8]   # weight memory of the base in fp32 / bf16 / 4-bit (QLoRA)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import alternate, paired_ratio, run_child, training_growth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

VOCAB, BATCH, SEQ = 4000, 8, 128
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
VARIANTS = ("floor", "ours", "peft")


NUM_EXPERTS = 8  # --experts


def build_base() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    config = Qwen3MoeConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        moe_intermediate_size=512,
        num_experts=NUM_EXPERTS,
        num_experts_per_tok=2,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # transformers leaves routers at zero: route by token
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0, 0.02)
    return model


def build(variant: str) -> torch.nn.Module:
    model = build_base()
    if variant == "ours":
        from peft_framework.adapters.lora import LoraConfig, LoraMethod

        LoraMethod().inject(model, LoraConfig(r=16, alpha=32, target_parameters=EXPERTS))
    elif variant == "peft":
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=32, target_modules=None, target_parameters=EXPERTS)
        )
    else:
        for param in model.parameters():
            param.requires_grad = False
        model.enable_input_require_grads()
    # B != 0 in both (same seed): the update really is computed
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.normal_(0, 0.01)
    return model.train()


class Stepper:
    def __init__(self, variant: str) -> None:
        self.model = build(variant)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if variant != "floor" else None
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        self.batch = {"input_ids": ids, "labels": ids.clone()}

    def step(self) -> float:
        start = time.perf_counter()
        self.model(**self.batch).loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def quantized_weights() -> dict[str, dict[str, float]]:
    """QLoRA on an MoE base: the same model saved once, loaded as the train stage loads it (fp32, bf16, 4-bit
    nf4 through bitsandbytes) -- weight bytes in all and of the routed experts, which bitsandbytes leaves in
    the compute dtype (it quantizes nn.Linear layers only)."""
    import tempfile

    from quantized_memory import load, weight_bytes

    from peft_framework.models.moe import routed_expert_params

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        build_base().save_pretrained(tmp)
        for mode in ("fp32", "bf16", "4bit"):
            model = load(Path(tmp), mode)
            routed = set(routed_expert_params(model))
            experts = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n in routed)
            total = weight_bytes(model)
            out[mode] = {
                "weights_mb": round(total / 2**20, 1),
                "routed_experts_mb": round(experts / 2**20, 1),
                "rest_mb": round((total - experts) / 2**20, 1),
            }
    return out


def memory(variant: str, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, "--threads", str(threads)]
    return run_child([*cmd, "--experts", str(NUM_EXPERTS)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--experts", type=int, default=8, help="routed experts per layer (top-2 either way)")
    parser.add_argument(
        "--qlora", action="store_true", help="only the weight memory of fp32 / bf16 / 4-bit bases"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    global NUM_EXPERTS
    NUM_EXPERTS = args.experts
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(training_growth(Stepper(args.child), 3)))
        return
    if args.qlora:
        print(json.dumps({"experts": NUM_EXPERTS, "weights": quantized_weights()}, indent=2))
        return
    steppers = {v: Stepper(v) for v in VARIANTS}
    times = alternate(steppers, args.steps, args.warmup)
    med = {v: statistics.median(t) for v, t in times.items()}
    round_ratio = {
        (a, b): paired_ratio(times, a, b) for a, b in (("ours", "floor"), ("ours", "peft"), ("peft", "floor"))
    }
    mem = {v: memory(v, args.threads) for v in VARIANTS}
    result = {
        "step_ms": {v: round(1000 * t, 1) for v, t in med.items()},
        "trainable": {v: steppers[v].trainable for v in VARIANTS},
        "ratio_ours_floor": round(round_ratio[("ours", "floor")], 3),
        "ratio_ours_peft": round(round_ratio[("ours", "peft")], 3),
        "ratio_peft_floor": round(round_ratio[("peft", "floor")], 3),
        "training_growth_mb": {v: round(m["training_growth_mb"], 1) for v, m in mem.items()},
        "growth_ratio_ours_peft": round(
            mem["ours"]["training_growth_mb"] / mem["peft"]["training_growth_mb"], 3
        ),
        # what an adapter costing nothing beyond the frozen floor could reach against peft
        "floor_over_peft": round(1 / round_ratio[("peft", "floor")], 3),
        "growth_over_floor_ratio_ours_peft": round(
            (mem["ours"]["training_growth_mb"] - mem["floor"]["training_growth_mb"])
            / (mem["peft"]["training_growth_mb"] - mem["floor"]["training_growth_mb"]),
            3,
        ),
        "experts": NUM_EXPERTS,
        "threads": args.threads,
        "steps": args.steps,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
