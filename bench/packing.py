"""train.packing vs padded batches on a long tail of row lengths: non-padding tokens per second.

    python bench/packing.py [--steps 30] [--batch 8] [--threads 2]

Rows: lengths drawn lognormal (median 64 tokens, sigma 1.0), capped at 1024, random token ids, the first
quarter of each row masked out of the loss as a prompt. Model: a tiny Llama (hidden 512, 4 layers, see BENCH_MODEL) with LoRA r=8 on
q/v (this project's LoRA), AdamW; one training step = forward + backward + optimizer step on a batch of
`--batch` rows, padded to the longest row (`PadCollator`) or flattened (`train.packing`). The same batches,
in the same order, alternate between the two variants; the first 3 steps of each are warm-up. Prints the
median step time and the non-padding tokens per second of each, and the ratio.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

# the model of bench/train_throughput.py, 4 layers instead of 6: per-token work as in real models (the
# builtin tiny Llama is so narrow that attention, quadratic in the sequence, would dominate)
BENCH_MODEL = dict(
    vocab_size=8000,
    hidden_size=512,
    intermediate_size=1376,
    num_attention_heads=8,
    num_key_value_heads=8,
    num_hidden_layers=4,
)


def rows(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(math.log(64) + torch.randn(n, generator=g)).round().clamp(4, 1024).long().tolist()
    out = []
    for n_tok in lengths:
        ids = torch.randint(3, 250, (n_tok,), generator=g).tolist()
        prompt = n_tok // 4
        out.append(
            {"input_ids": ids, "attention_mask": [1] * n_tok, "labels": [-100] * prompt + ids[prompt:]}
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from peft_framework.adapters import registry
    from peft_framework.adapters.lora import LoraConfig
    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.collator import make_collator

    data = rows(args.steps * args.batch)
    batches = [data[i * args.batch : (i + 1) * args.batch] for i in range(args.steps)]
    variants = {}
    for name, packing in (("padded", False), ("packed", True)):
        model = tiny_llama(attn_implementation="sdpa", **BENCH_MODEL).train()
        registry.get("lora").inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        variants[name] = (model, opt, make_collator(packing, "causal_lm", 0), [])
    real_tokens = [sum(len(r["input_ids"]) for r in b) for b in batches]
    padded_tokens = [len(b) * max(len(r["input_ids"]) for r in b) for b in batches]
    for step, batch in enumerate(batches):
        for model, opt, collate, times in variants.values():
            inputs = collate(batch)
            started = time.perf_counter()
            model(**inputs).loss.backward()
            opt.step()
            opt.zero_grad()
            if step >= 3:
                times.append(time.perf_counter() - started)
    tokens = statistics.median(real_tokens[3:])
    print(
        f"rows per batch {args.batch}; median real tokens per batch {tokens:.0f}, padded to "
        f"{statistics.median(padded_tokens[3:]):.0f} ({sum(real_tokens) / sum(padded_tokens):.0%} real)"
    )
    rate = {}
    for name, (_, _, _, times) in variants.items():
        rate[name] = sum(real_tokens[3:]) / sum(times)
        print(
            f"{name}: median step {statistics.median(times) * 1e3:.0f} ms, {rate[name]:.0f} non-padding tokens/s"
        )
    print(f"packed / padded: {rate['packed'] / rate['padded']:.2f}x")


if __name__ == "__main__":
    main()
