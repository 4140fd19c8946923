"""The LoRA linear layers alone: the cost over the frozen base layers, without the rest of the model.

    python bench/lora_layers.py [--threads 2] [--rounds 60] [--tokens 1024]

One transformer block's linear layers of the bench model (q, k, v, o: 512 -> 512; gate, up: 512 -> 1376;
down: 1376 -> 512), LoRA r=16, each fed a (tokens, in) input. Training: forward + backward of each layer
(input gradient, A and B gradients); the floor is the frozen base layers' forward + input gradient.
Inference: forward under no_grad. Variants alternate round by round; prints medians and the median of
per-round ratios to the floor, and the ratio of minima (interference only ever slows a run down, so the
fastest of many runs is the least disturbed; the machine is shared).
Variants: base (floor), ours, ours-no-merged-fwd (inference: in-place branch instead of the merged
weight), ours-reference (fast path off: peft's formula with modules), peft (peft's LoRA layers).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

SHAPES = {
    "q": (512, 512),
    "k": (512, 512),
    "v": (512, 512),
    "o": (512, 512),
    "gate": (512, 1376),
    "up": (512, 1376),
    "down": (1376, 512),
}
R, ALPHA = 16, 32


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        for name, (n_in, n_out) in SHAPES.items():
            self.add_module(name, nn.Linear(n_in, n_out, bias=False))


def build(variant: str) -> nn.Module:
    block = Block()
    if variant == "peft":
        import peft

        block = peft.get_peft_model(
            block, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(SHAPES))
        )
    elif variant != "base":
        from peft_framework.adapters import get_adapter
        from peft_framework.adapters.lora.config import LoraConfig

        get_adapter("lora").inject(block, LoraConfig(r=R, alpha=ALPHA, target_modules=list(SHAPES)))
    for name, param in block.named_parameters():
        param.requires_grad = "lora_" in name
    with torch.no_grad():  # B starts at zero; give it values so that nothing is special-cased
        for name, param in block.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return block


def layers(block: nn.Module) -> dict[str, nn.Module]:
    inner = block.base_model.model if hasattr(block, "base_model") else block
    return {name: getattr(inner, name) for name in SHAPES}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peft_framework.adapters.lora import fast

    switches = {
        "ours": {"fused": True, "merged_forward": True},
        "ours-no-merged-fwd": {"fused": True, "merged_forward": False},
        "ours-reference": {"fused": False, "merged_forward": True},
    }
    variants = ["base", "ours", "ours-no-merged-fwd", "ours-reference", "peft"]
    blocks = {v: layers(build("ours" if v.startswith("ours") else v)) for v in variants}
    inputs = {n: torch.randn(args.tokens, n, requires_grad=True) for n in (512, 1376)}
    grads = {n: torch.randn(args.tokens, n) for n in (512, 1376)}

    def training(v: str) -> None:
        fast.configure(**switches.get(v, {}))
        for name, layer in blocks[v].items():
            n_in, n_out = SHAPES[name]
            layer(inputs[n_in]).backward(grads[n_out])

    @torch.no_grad()
    def inference(v: str) -> None:
        fast.configure(**switches.get(v, {}))
        for name, layer in blocks[v].items():
            layer(inputs[SHAPES[name][0]])

    for label, fn in (
        ("training (forward + backward)", training),
        ("inference (no_grad forward)", inference),
    ):
        times = measure(fn, variants, args.rounds)
        print(f"{label}, {args.tokens} tokens, {args.threads} threads:")
        for v in variants:
            ratio = statistics.median(a / b for a, b in zip(times[v], times["base"]))
            print(
                f"  {v:20} median {statistics.median(times[v]) * 1e3:8.2f} ms  min {min(times[v]) * 1e3:8.2f} ms"
                f"   / base: paired median {ratio:.3f}, of minima {min(times[v]) / min(times['base']):.3f}"
            )


def measure(fn: Callable[[str], None], variants: list[str], rounds: int) -> dict[str, list[float]]:
    for _ in range(3):
        for v in variants:
            fn(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(rounds):
        k = i % len(variants)
        for v in variants[k:] + variants[:k]:
            start = time.perf_counter()
            fn(v)
            times[v].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
