"""DoRA training step time and peak memory: DoRA vs LoRA, this project vs HuggingFace peft, one run.

    python bench/dora.py [--steps 12] [--warmup 3] [--threads 2] [--layers 4] [--json out.json]

The model, batch and LoRA settings of train_throughput.py (tiny Llama, hidden 512, batch 8 x 128, r=16 on
every linear layer of the blocks, fused AdamW), with `--layers` blocks. Variants:
  ours-lora            peft_framework LoRA (fast path)
  ours-dora            peft_framework DoRA (`use_dora: true`): the fused LoRA node times m / ‖W + s·BA‖
  ours-dora-reference  the same with the fused path off: peft's DoRA formula written with modules
  peft-lora, peft-dora HuggingFace peft 0.21, same configs
Step times alternate the variants step by step in one process (rotating order) after warm-up: medians,
and ratios as medians of per-round ratios (the machine is shared; ratios measured in the same run are what
to quote). Peak RSS: each variant in a fresh subprocess, the growth during training steps over the RSS
after the model was built (VmHWM reset through /proc/self/clear_refs). Prints ratios; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch
import train_throughput
from _common import alternate, paired_ratio, run_child, training_growth
from train_throughput import ALPHA, TARGETS, R, machine, make_batch

VARIANTS = ["ours-lora", "ours-dora", "ours-dora-reference", "peft-lora", "peft-dora"]


def build(variant: str) -> torch.nn.Module:
    model = train_throughput.build_base()
    dora = "dora" in variant
    if variant.startswith("ours"):
        from peft_framework.adapters import get_adapter
        from peft_framework.adapters.lora.config import LoraConfig

        get_adapter("lora").inject(model, LoraConfig(r=R, alpha=ALPHA, target_modules=TARGETS, use_dora=dora))
    else:
        import peft

        model = peft.get_peft_model(
            model,
            peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, use_dora=dora),
        )
    return model.train()


class Stepper:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.model = build(variant)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        self.batch = make_batch()
        self.fused = variant != "ours-dora-reference"

    def step(self) -> float:
        from peft_framework.adapters.lora import fast

        fast.configure(fused=self.fused)
        start = time.perf_counter()
        self.model(**self.batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def peak_rss_child(variant: str, steps: int) -> None:
    print(json.dumps(training_growth(Stepper(variant), steps)))


def peak_rss(variant: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, "--threads", str(args.threads)]
    return run_child([*cmd, "--layers", str(args.layers)])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4, help="transformer blocks of the tiny Llama")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base_build = train_throughput.build_base

    def build_base(seed: int = 0):
        model = base_build(seed)
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
        return model

    train_throughput.build_base = build_base
    if args.child:
        peak_rss_child(args.child, max(3, args.warmup))
        return

    import peft

    report: dict[str, Any] = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "threads": args.threads,
        "layers": args.layers,
        "machine": machine(),
        "load_before": os.getloadavg(),
    }
    steppers = {v: Stepper(v) for v in VARIANTS}
    report["trainable"] = {v: s.trainable for v, s in steppers.items()}
    times = alternate(steppers, args.steps, args.warmup)
    del steppers
    report["step_ms"] = {v: round(1000 * statistics.median(t), 1) for v, t in times.items()}

    def ratio(a: str, b: str) -> float:
        return round(paired_ratio(times, a, b), 3)

    report["ratios"] = {
        "ours-dora / ours-lora": ratio("ours-dora", "ours-lora"),
        "peft-dora / peft-lora": ratio("peft-dora", "peft-lora"),
        "ours-dora / peft-dora": ratio("ours-dora", "peft-dora"),
        "ours-dora-reference / peft-dora": ratio("ours-dora-reference", "peft-dora"),
        "ours-lora / peft-lora": ratio("ours-lora", "peft-lora"),
    }
    report["memory"] = {v: peak_rss(v, args) for v in VARIANTS}
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
