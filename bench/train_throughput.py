"""LoRA training throughput and memory: this project vs HuggingFace peft vs the frozen-model floor.

    python bench/train_throughput.py [--steps 12] [--warmup 3] [--threads 2] [--ablations] [--compile]
                                     [--json out.json]

Model: tiny Llama built from config (6 layers, hidden 512, intermediate 1376, 8 heads, vocab 8000),
batch 8 x 128 tokens, LoRA r=16 (alpha 32, dropout 0) on every linear layer of the blocks, AdamW
(fused=True: the `adamw_torch_fused` that transformers' Trainer, and so the train stage, uses by default).
Variants:
  ours   - peft_framework's native LoRA, every fast-path optimisation on
  peft   - HuggingFace peft, same LoRA config
  floor  - same model, every weight frozen, no adapter (forward + backward through activations)
  with --ablations, also ours with the fast path switched off (`ABLATIONS`), to show what it buys;
  with --compile, also each of ours/peft/floor under torch.compile (inductor; `train.compile: true`),
  compile time reported separately;
  bench/lora_layers.py measures the layers alone, where the differences are less drowned in noise.
Timing alternates the variants step by step in one process after warm-up (machine noise hits all alike;
the order rotates every step) and reports medians. Peak RSS is measured per variant in a fresh
subprocess: the whole process (imports included) and the growth during training steps over the RSS
after the model was built. Then unmerged-adapter inference latency (ours, peft) vs the base model, and
merge time. Prints the system load before and after (the machine is shared: read figures taken under
load with care). Prints ratios; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _common import alternate, paired_ratio, run_child, training_growth
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 16, 32
BATCH, SEQ, VOCAB = 8, 128, 8000
#: ours with one fast-path switch changed (peft_framework.adapters.lora.fast.OPTIONS)
ABLATIONS: dict[str, dict[str, bool]] = {
    "ours-reference": {"fused": False},  # peft's formula with modules (the path before the fast one)
}


def build_base(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def inject_ours(model: torch.nn.Module) -> Any:
    from peft_framework.adapters import get_adapter
    from peft_framework.adapters.lora.config import LoraConfig

    method = get_adapter("lora")
    method.inject(model, LoraConfig(r=R, alpha=ALPHA, dropout=0.0, target_modules=TARGETS))
    return method


def inject_peft(model: torch.nn.Module) -> torch.nn.Module:
    import peft

    return peft.get_peft_model(
        model, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)
    )


def build(variant: str) -> torch.nn.Module:
    model = build_base()
    if variant.startswith("ours"):
        inject_ours(model)
    elif variant == "peft":
        model = inject_peft(model)
    elif variant == "floor":
        # Every weight frozen, no adapter; the embedding output requires grad so backward still flows
        # through every block's activations (what LoRA's backward must do at the least).
        for param in model.parameters():
            param.requires_grad = False
        model.enable_input_require_grads()
    else:
        raise ValueError(variant)
    model.train()
    return model


def switches(variant: str) -> dict[str, bool]:
    """The fast-path switches a variant runs with (all on, or one off)."""
    from peft_framework.adapters.lora import fast

    settings = {name: True for name in fast.OPTIONS}
    settings.update({**ABLATIONS, "ours-no-merged-fwd": {"merged_forward": False}}.get(variant, {}))
    return settings


def make_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


COMPILED = "+compile"


class Stepper:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        compiled = variant.endswith(COMPILED)
        variant = variant.removesuffix(COMPILED)
        self.model = build(variant)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
        self.batch = make_batch()
        self.switches = switches(variant) if variant.startswith("ours") else None
        self.compile_s: float | None = None
        if compiled:
            start = time.perf_counter()
            self.model = torch.compile(self.model)
            self.step()  # the forward and backward graphs are compiled on the first call
            self.compile_s = time.perf_counter() - start

    def step(self) -> float:
        if self.switches is not None:
            from peft_framework.adapters.lora import fast

            fast.configure(**self.switches)
        start = time.perf_counter()
        loss = self.model(**self.batch).loss
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- memory
def peak_rss_child(variant: str, steps: int) -> None:
    """In a fresh process (VmHWM starts anew at exec): build, then train; the high-water mark is read
    after the build and reset (Linux >= 4.0), so the training peak is measured on its own."""
    print(json.dumps(training_growth(Stepper(variant), steps)))


def peak_rss(variant: str, threads: int, steps: int) -> dict[str, float]:
    return run_child(
        [sys.executable, __file__, "--child", variant, "--threads", str(threads), "--steps", str(steps)]
    )


# ---------------------------------------------------------------------------------------- inference
@torch.no_grad()
def inference_and_merge(steps: int) -> dict[str, float]:
    """Eval-mode forward (no cache) of the base model, ours unmerged (fast path and reference path) and
    peft unmerged, with the same non-zero adapter weights; then the time to merge, ours and peft's."""
    import peft
    from peft.utils import get_peft_model_state_dict

    from peft_framework.adapters.lora import fast

    base = build_base().eval()
    theirs = inject_peft(build_base()).eval()
    gen = torch.Generator().manual_seed(0)
    for _, param in sorted(theirs.named_parameters()):  # B starts at zero: give the adapter real values
        if param.requires_grad:
            param.normal_(0.0, 0.02, generator=gen)
    ours = build_base().eval()
    method = inject_ours(ours)
    method.load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    ours.eval()
    ids = make_batch()["input_ids"]

    def run_ours(variant: str):
        fast.configure(**switches(variant))
        return ours(input_ids=ids, use_cache=False).logits

    runs = {
        "base": lambda: base(input_ids=ids, use_cache=False).logits,
        "ours": lambda: run_ours("ours"),
        "ours-no-merged-fwd": lambda: run_ours("ours-no-merged-fwd"),
        "ours-reference": lambda: run_ours("ours-reference"),
        "peft": lambda: theirs(input_ids=ids, use_cache=False).logits,
    }
    max_diff = (runs["ours"]() - runs["peft"]()).abs().max().item()
    for _ in range(2):
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for i in range(steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    unmerged = runs["ours"]()
    start = time.perf_counter()
    method.merge(ours)
    ours_merge = time.perf_counter() - start
    merged_diff = (runs["ours"]() - unmerged).abs().max().item()
    start = time.perf_counter()
    theirs.merge_adapter()
    peft_merge = time.perf_counter() - start
    assert isinstance(theirs, peft.PeftModel)
    result = {f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}
    result.update(
        {
            f"{k}_over_base_paired": statistics.median(a / b for a, b in zip(v, times["base"]))
            for k, v in times.items()
        }
    )
    result.update(
        ours_merge_ms=ours_merge * 1e3,
        peft_merge_ms=peft_merge * 1e3,
        ours_vs_peft_max_abs_logit_diff=max_diff,
        merged_vs_unmerged_max_abs_logit_diff=merged_diff,
    )
    return result


# --------------------------------------------------------------------------------------------- main
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ablations", action="store_true", help="also time ours with each optimisation off")
    parser.add_argument(
        "--compile", action="store_true", help="also time ours, peft and floor under torch.compile (inductor)"
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        peak_rss_child(args.child, max(3, args.warmup))
        return

    import peft

    variants = ["ours", "peft", "floor"] + (list(ABLATIONS) if args.ablations else [])
    if args.compile:
        variants += [v + COMPILED for v in ("ours", "peft", "floor")]
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "threads": args.threads,
        "machine": machine(),
        "load_before": os.getloadavg(),
    }
    print(f"torch {torch.__version__}, peft {peft.__version__}, {args.threads} threads, {report['machine']}")
    print(f"batch {BATCH}x{SEQ}, LoRA r={R} alpha={ALPHA} on {TARGETS}; load average {report['load_before']}")
    steppers = {v: Stepper(v) for v in variants}
    for v, stepper in steppers.items():
        if stepper.compile_s is not None:
            print(f"compile {v}: {stepper.compile_s:.1f} s (first step included)")
    report["compile_s"] = {v: st.compile_s for v, st in steppers.items() if st.compile_s is not None}
    times = alternate(steppers, args.steps, args.warmup)
    report["load_after_training"] = os.getloadavg()
    med = {v: statistics.median(times[v]) for v in variants}
    tokens = BATCH * SEQ
    print(
        f"{'variant':18} {'trainable':>10} {'ms/step':>8} {'min':>8} {'max':>8} {'tokens/s':>9} {'/floor':>7}"
    )
    for v in variants:
        print(
            f"{v:18} {steppers[v].trainable:>10,} {med[v] * 1e3:>8.1f} {min(times[v]) * 1e3:>8.1f} "
            f"{max(times[v]) * 1e3:>8.1f} {tokens / med[v]:>9.0f} {med[v] / med['floor']:>7.3f}"
        )
    report["train"] = {
        v: {"median_ms": med[v] * 1e3, "all_ms": [t * 1e3 for t in times[v]], "tokens_per_s": tokens / med[v]}
        for v in variants
    }

    def paired(a: str, b: str) -> float:
        return paired_ratio(times, a, b)

    report["ratios"] = {
        "throughput_ours_over_peft": med["peft"] / med["ours"],
        "step_ours_over_floor": med["ours"] / med["floor"],
        "step_peft_over_floor": med["peft"] / med["floor"],
    }
    report["paired_ratios"] = {
        "throughput_ours_over_peft": paired("peft", "ours"),
        **{f"step_{v}_over_floor": paired(v, "floor") for v in variants if v != "floor"},
    }
    r, p = report["ratios"], report["paired_ratios"]
    print("ratios: of medians | median of per-round ratios")
    print(
        f"throughput ours/peft  = {r['throughput_ours_over_peft']:.3f} | {p['throughput_ours_over_peft']:.3f}  (goal >= 1.25)"
    )
    print(
        f"step time  ours/floor = {r['step_ours_over_floor']:.3f} | {p['step_ours_over_floor']:.3f}  (goal <= 1.15)"
    )
    print(f"step time  peft/floor = {r['step_peft_over_floor']:.3f} | {p['step_peft_over_floor']:.3f}")
    for v in variants[3:]:
        print(f"step time  {v}/floor = {med[v] / med['floor']:.3f} | {p[f'step_{v}_over_floor']:.3f}")
    if args.compile:
        oc, pc, fc = (v + COMPILED for v in ("ours", "peft", "floor"))
        compiled = {
            "throughput_ours+compile_over_peft": (med["peft"] / med[oc], paired("peft", oc)),
            "throughput_ours+compile_over_peft+compile": (med[pc] / med[oc], paired(pc, oc)),
            "step_ours+compile_over_floor+compile": (med[oc] / med[fc], paired(oc, fc)),
            "step_peft+compile_over_floor+compile": (med[pc] / med[fc], paired(pc, fc)),
        }
        report["compiled_ratios"] = {k: {"of_medians": a, "paired": b} for k, (a, b) in compiled.items()}
        for name, (a, b) in compiled.items():
            print(f"{name:42} = {a:.3f} | {b:.3f}")
    print(f"load average after timing: {report['load_after_training']}")
    del steppers
    if not args.skip_memory:
        rss = {v: peak_rss(v, args.threads, max(3, args.warmup)) for v in ("ours", "peft", "floor")}
        report["memory"] = rss
        for v, m in rss.items():
            growth = m.get("training_growth_mb")
            print(
                f"memory {v:6}: peak RSS {m['peak_rss_mb']:.0f} MB (process), after build "
                f"{m['built_rss_mb']:.0f} MB, growth during training {growth if growth is None else round(growth)} MB"
            )
        print(
            f"peak RSS ours/peft = {rss['ours']['peak_rss_mb'] / rss['peft']['peak_rss_mb']:.3f} (goal <= 1.0)"
            + (
                f"; training growth ours/peft = {rss['ours']['training_growth_mb'] / rss['peft']['training_growth_mb']:.3f}"
                if rss["ours"].get("training_growth_mb") and rss["peft"].get("training_growth_mb")
                else ""
            )
        )
    if not args.skip_inference:
        inf = inference_and_merge(args.steps)
        report["inference"] = inf
        base = inf["base_ms"]
        print(
            f"inference (eval, no cache, {BATCH}x{SEQ}): base {base:.1f} ms; unmerged ours {inf['ours_ms']:.1f} ms "
            f"({inf['ours_ms'] / base - 1:+.1%}, goal <= +10%), without the merged weight "
            f"{inf['ours-no-merged-fwd_ms']:.1f} ms ({inf['ours-no-merged-fwd_ms'] / base - 1:+.1%}), "
            f"ours-reference {inf['ours-reference_ms']:.1f} ms "
            f"({inf['ours-reference_ms'] / base - 1:+.1%}), peft {inf['peft_ms']:.1f} ms ({inf['peft_ms'] / base - 1:+.1%})"
        )
        print(
            "inference / base, median of per-round ratios: "
            + ", ".join(
                f"{k} {inf[f'{k}_over_base_paired']:.3f}"
                for k in ("ours", "ours-no-merged-fwd", "ours-reference", "peft")
            )
        )
        print(
            f"merge: ours {inf['ours_merge_ms']:.1f} ms, peft {inf['peft_merge_ms']:.1f} ms; logits ours vs peft max "
            f"|diff| {inf['ours_vs_peft_max_abs_logit_diff']:.2e}, merged vs unmerged {inf['merged_vs_unmerged_max_abs_logit_diff']:.2e}"
        )
    report["load_after"] = os.getloadavg()
    print(f"load average at the end: {report['load_after']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
