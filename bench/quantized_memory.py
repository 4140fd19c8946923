"""Quantized bases (QLoRA) on a ~100M-parameter Llama: weight memory and training-step peak memory in fp32,
bf16, 8-bit and 4-bit, this project vs HuggingFace peft; step time of ours vs peft vs the frozen floor in
bf16 mixed precision.

    python bench/quantized_memory.py [--modes fp32,bf16,8bit,4bit] [--steps 3] [--time-steps 6]
                                     [--time-model full|small] [--threads 2] [--skip-time]
                                     [--skip-memory] [--variants ours,peft]
                                     [--setups autocast,bf16-weights] [--json out.json]

Model: Llama built from config (12 layers, hidden 768, intermediate 2048, 12 heads, vocab 8000: 97M
parameters, 85M of them in the blocks' linear layers), saved once as an fp32 safetensors checkpoint and
loaded from it through `peft_framework.models.loading.load_base_model` in each mode:

  fp32  model.dtype float32
  bf16  model.dtype bfloat16 (the adapter in fp32, peft's default)
  8bit  model.quantization.bits 8 (bitsandbytes Linear8bitLt), other weights bf16
  4bit  model.quantization.bits 4 (nf4, double quant, bf16 compute; Linear4bit), other weights bf16

LoRA r=16, alpha 32 on q/k/v/o/gate/up/down; quantized modes prepared for k-bit training first (ours:
`training.kbit.prepare_kbit_training`, peft: `prepare_model_for_kbit_training`, both casting the bf16
norms/embeddings/head to fp32). Batch 4 x 128 tokens, AdamW (fused) over the adapter.

Memory, each (mode, variant) in a fresh subprocess: *weights* = bytes of the model's parameters and
buffers after loading (packed 4-/8-bit data plus their quantization constants); *step peak* = growth of
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) during `--steps` training steps over
the RSS with the model built and the adapter attached; *process peak* = VmHWM of the whole process.

Step time: bf16 mixed precision on CPU, two set-ups: `autocast` (fp32 weights under torch.autocast bf16:
what `train.precision: bf16` runs) and `bf16-weights` (model.dtype bfloat16, fp32 adapter, no autocast).
ours / peft / floor (every weight frozen, no adapter, the embedding output requiring grad) run in one
process, alternating step by step in a rotating order after 2 warm-up steps; medians, and the median of
per-round ratios (the machine is shared: ratios measured in the same run are what to quote).
`--time-model small` times train_throughput.py's model instead (6 layers, hidden 512, intermediate 1376,
vocab 8000: 27.2M parameters) where a step of the ~100M model is too slow for enough rounds on a small CPU;
the memory part always uses the ~100M model.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import reset_peak_rss, status_kb

print = functools.partial(print, flush=True)  # noqa: A001 - progress shows while children run

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R, ALPHA = 16, 32
BATCH, SEQ, VOCAB = 4, 128, 8000
#: model shapes: "full" is the ~100M model of the memory part; "small" is bench/train_throughput.py's
SIZES = {
    "full": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1376,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
    },
}
MODES = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "8bit": {"dtype": "bfloat16", "quantization": {"bits": 8}},
    "4bit": {"dtype": "bfloat16", "quantization": {"bits": 4}},
}


def save_base(directory: Path, size: str = "full") -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = SIZES[size]
    config = LlamaConfig(
        vocab_size=VOCAB,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **shape,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    return sum(p.numel() for p in model.parameters())


def load(directory: Path, mode: str):
    from peft_framework.config.schema import ModelConfig
    from peft_framework.models.loading import load_base_model

    return load_base_model(ModelConfig(name_or_path=str(directory), **MODES[mode]))


def _tensor_bytes(tensors, seen: set[int]) -> int:
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _quant_state_bytes(state: Any, seen: set[int]) -> int:
    if state is None:
        return 0
    values = list(vars(state).values())
    return _tensor_bytes(values, seen) + sum(
        _quant_state_bytes(v, seen) for v in values if hasattr(v, "absmax")
    )


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers as stored, each storage once, plus bitsandbytes' quantization constants."""
    seen: set[int] = set()
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        total += _tensor_bytes([t, getattr(t, "SCB", None)], seen)
        total += _quant_state_bytes(getattr(t, "quant_state", None), seen)
    return total


def attach(model: torch.nn.Module, variant: str, quantized: bool) -> torch.nn.Module:
    if variant == "ours":
        from peft_framework.adapters import get_adapter
        from peft_framework.adapters.lora.config import LoraConfig
        from peft_framework.training.kbit import prepare_kbit_training

        prepare_kbit_training(model, gradient_checkpointing=False)
        get_adapter("lora").inject(model, LoraConfig(r=R, alpha=ALPHA, dropout=0.0, target_modules=TARGETS))
    elif variant == "peft":
        import peft

        if quantized:
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS)
        )
    elif variant == "floor":
        for param in model.parameters():
            param.requires_grad = False
        model.enable_input_require_grads()
    else:
        raise ValueError(variant)
    return model.train()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


class Stepper:
    def __init__(self, model: torch.nn.Module, autocast: bool) -> None:
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
        self.batch = batch()
        self.autocast = autocast

    def step(self) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(**self.batch).loss
        loss.float().backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- memory
def memory_child(directory: Path, mode: str, variant: str, steps: int) -> None:
    model = load(directory, mode)
    weights = weight_bytes(model)
    quantized = "quantization" in MODES[mode]
    model = attach(model, variant, quantized)
    stepper = Stepper(model, autocast=False)
    built = status_kb("VmRSS") / 1024
    build_peak = status_kb("VmHWM") / 1024
    reset_peak_rss()
    seconds = [stepper.step() for _ in range(steps)]
    hwm = status_kb("VmHWM") / 1024
    print(
        json.dumps(
            {
                "weights_mb": weights / 2**20,
                "built_rss_mb": built,
                "step_peak_growth_mb": hwm - built,
                "process_peak_mb": max(build_peak, hwm),
                "step_s": statistics.median(seconds),
            }
        )
    )


def memory(directory: Path, mode: str, variant: str, steps: int, threads: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{mode}:{variant}", "--dir", str(directory),
         "--steps", str(steps), "--threads", str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- time
def step_times(directory: Path, setup: str, steps: int, warmup: int = 2) -> dict[str, Any]:
    mode, autocast = ("fp32", True) if setup == "autocast" else ("bf16", False)
    steppers = {
        v: Stepper(attach(load(directory, mode), v, False), autocast) for v in ("ours", "peft", "floor")
    }
    names = list(steppers)
    times: dict[str, list[float]] = {v: [] for v in names}
    for i in range(warmup + steps):
        rotated = names[i % len(names) :] + names[: i % len(names)]
        for v in rotated:
            t = steppers[v].step()
            if i >= warmup:
                times[v].append(t)
        if i >= warmup:  # progress, so that a run cut short on a loaded machine still leaves its rounds
            print(
                f"  {setup} round {i - warmup + 1}: "
                + ", ".join(f"{v} {times[v][-1] * 1e3:.0f} ms" for v in names)
            )
    med = {v: statistics.median(ts) for v, ts in times.items()}
    paired = {
        f"{a}/{b}": statistics.median(x / y for x, y in zip(times[a], times[b]))
        for a, b in (("ours", "floor"), ("peft", "floor"), ("ours", "peft"))
    }
    return {"median_s": med, "paired_ratio": paired}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="fp32,bf16,8bit,4bit")
    parser.add_argument("--steps", type=int, default=3, help="training steps per memory child")
    parser.add_argument("--variants", default="ours,peft", help="memory part: which of ours,peft to run")
    parser.add_argument("--time-steps", type=int, default=6, help="timed steps per variant")
    parser.add_argument(
        "--time-model", choices=sorted(SIZES), default="full", help="model the step-time part runs on"
    )
    parser.add_argument("--setups", default="autocast,bf16-weights", help="step-time set-ups to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        mode, variant = args.child.split(":")
        memory_child(Path(args.dir), mode, variant, args.steps)
        return

    import bitsandbytes
    import peft
    import transformers

    report: dict[str, Any] = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__,
        },
        "threads": args.threads,
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-qlora-") as tmp:
        directory = Path(tmp)
        if not args.skip_memory or (not args.skip_time and args.time_model == "full"):
            report["parameters"] = save_base(directory)
            print(f"model: {report['parameters'] / 1e6:.1f}M parameters; load {report['load_before']}")
        if not args.skip_memory:
            report["memory"] = {}
            print(
                f"{'mode':6} {'variant':6} {'weights MB':>10} {'step peak +MB':>13} {'process peak MB':>15}"
            )
            for mode in args.modes.split(","):
                for variant in args.variants.split(","):
                    r = memory(directory, mode, variant, args.steps, args.threads)
                    report["memory"][f"{mode}:{variant}"] = r
                    print(
                        f"{mode:6} {variant:6} {r['weights_mb']:10.1f} {r['step_peak_growth_mb']:13.1f} "
                        f"{r['process_peak_mb']:15.1f}"
                    )
            m = report["memory"]
            modes = args.modes.split(",")
            if "fp32" in modes and "ours" in args.variants:
                for mode in modes:
                    ratio = m[f"{mode}:ours"]["weights_mb"] / m["fp32:ours"]["weights_mb"]
                    print(f"weights {mode} / fp32: {ratio:.3f}")
            for mode in modes if args.variants == "ours,peft" else ():
                o, p = m[f"{mode}:ours"], m[f"{mode}:peft"]
                print(
                    f"{mode}: ours/peft step peak growth {o['step_peak_growth_mb'] / p['step_peak_growth_mb']:.3f}, "
                    f"process peak {o['process_peak_mb'] / p['process_peak_mb']:.3f}"
                )
        if not args.skip_time:
            report["time"] = {"model": args.time_model}
            time_dir = directory
            if args.time_model != "full":
                time_dir = directory / args.time_model
                n = save_base(time_dir, args.time_model)
                report["time"]["parameters"] = n
                print(f"step time on the {args.time_model} model: {n / 1e6:.1f}M parameters")
            for setup in args.setups.split(","):
                r = step_times(time_dir, setup, args.time_steps)
                report["time"][setup] = r
                med, paired = r["median_s"], r["paired_ratio"]
                print(
                    f"step time, bf16 {setup}: ours {med['ours'] * 1e3:.0f} ms, peft {med['peft'] * 1e3:.0f} ms, "
                    f"floor {med['floor'] * 1e3:.0f} ms; paired ratios "
                    + ", ".join(f"{k} {v:.3f}" for k, v in paired.items())
                )
    report["load_after"] = os.getloadavg()
    print(f"load average after: {report['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
