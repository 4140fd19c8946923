"""DPO step: ours (adapter-off reference, no second model) vs TRL 1.16's DPOTrainer.

    python bench/preference.py [--hidden 256 --layers 4 --batch 4 --seq 128 --steps 6]

Each variant runs in its own process on the same tiny Llama (built from a config, seeded), LoRA r=16 on all
linear layers, the same random pairs, SGD steps of `loss.backward()`:
- ours: `training.objectives.pairwise.DPO.compute_loss` with `as_reference` (our LoRA switched off);
- trl_ref: `trl.DPOTrainer.compute_loss` on a peft model, given an explicit reference model (a full copy);
- trl_peft: `trl.DPOTrainer.compute_loss` on a peft model, no reference model (peft switches the adapter off).
Printed: training-memory growth (peak RSS after the steps minus RSS once the base model is loaded; CPU) and
the median step CPU time (one thread; wall time on a shared machine is noise), as ratios against the anchors measured in the same run (memory: trl_ref; time:
trl_peft).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(args, vocab: int):
    import torch

    gen = torch.Generator().manual_seed(0)
    prompt = args.seq // 2
    ids = torch.randint(3, vocab, (2 * args.batch, args.seq), generator=gen)
    ids[args.batch :, :prompt] = ids[: args.batch, :prompt]  # chosen and rejected share the prompt
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def run_variant(name: str, args) -> dict[str, float]:
    import torch
    from transformers import LlamaForCausalLM

    from peft_framework.models.tiny import tiny_llama_config, tiny_tokenizer

    torch.manual_seed(0)
    config = tiny_llama_config(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    model = LlamaForCausalLM(config)
    batch = _batch(args, config.vocab_size)
    base_rss = _rss_mb()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if name == "ours":
        from peft_framework.adapters import get_adapter
        from peft_framework.adapters.lora.config import LoraConfig
        from peft_framework.training.objectives.base import as_reference
        from peft_framework.training.objectives.pairwise import DPO

        get_adapter("lora").inject(
            model, LoraConfig(type="lora", r=16, alpha=32, dropout=0.0, target_modules=targets)
        )
        objective, reference = (
            DPO(beta=0.1),
            functools.partial(as_reference, model, get_adapter("lora"), None),
        )

        def step():
            return objective.compute_loss(model, batch, reference)[0]

        policy = model
    else:
        import datasets
        import peft
        import trl

        ref = copy.deepcopy(model) if name == "trl_ref" else None
        policy = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets)
        )
        data = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
        out = tempfile.mkdtemp()
        trainer = trl.DPOTrainer(
            model=policy,
            ref_model=ref,
            args=trl.DPOConfig(
                output_dir=out, report_to=[], use_cpu=True, max_length=None, save_strategy="no"
            ),
            train_dataset=data,
            processing_class=tiny_tokenizer(),
        )
        policy = trainer.model
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        inputs["completion_mask"] = (batch["labels"] != -100).long()

        def step():
            return trainer.compute_loss(policy, inputs)

    policy.train()
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(args.steps):
        start = time.process_time()  # CPU time: the machine is shared, wall time is noisy
        loss = step()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.process_time() - start)
    return {"memory_growth_mb": _peak_mb() - base_rss, "step_s": statistics.median(times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--variant", choices=["ours", "trl_ref", "trl_peft"])
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    results = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    for variant in ("ours", "trl_ref", "trl_peft"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "variant"
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    for variant, r in results.items():
        print(
            f"{variant:9s} memory growth {r['memory_growth_mb']:8.1f} MB   step {r['step_s'] * 1000:8.1f} ms"
        )
    ours, ref, peft_only = results["ours"], results["trl_ref"], results["trl_peft"]
    print(
        f"memory growth: ours / TRL with explicit ref model = {ours['memory_growth_mb'] / ref['memory_growth_mb']:.2f}"
    )
    print(f"step time: ours / TRL+peft = {ours['step_s'] / peft_only['step_s']:.2f}")


if __name__ == "__main__":
    main()
