"""train.packing vs padded batches on a long tail of row lengths: non-padding tokens per second.

    python bench/packing.py [--rows 128] [--batch 8] [--max-seq-len 1024] [--pack-batch BATCH] [--threads 2]

Rows: lengths drawn lognormal (median 64 tokens, sigma 1.0), capped at 1024, random token ids, the first
quarter of each row masked out of the loss as a prompt. Model: a tiny Llama (hidden 512, 4 layers, see
BENCH_MODEL) with LoRA r=8 on q/v (this project's LoRA), AdamW; one training step = forward + backward +
optimizer step. The SAME `--rows` rows go through both variants once (one epoch): padded = batches of
`--batch` consecutive rows padded to the longest (`PadCollator`); packed = the rows packed across the epoch
by `train.packing`'s packer (training/packing.py, best-fit decreasing into `--max-seq-len` tokens) and
batched `--pack-batch` packs a step (default `--batch`: train.batch_size counts packs when packing; the
shorter packs of a batch padded with a segment of their own, `make_collator(True, ...)`). Steps of the two variants alternate
(so machine load hits both alike); one untimed warm-up step each first. Prints each variant's steps, time
and real (non-padding) tokens per second over the same rows, and the ratio.
"""

from __future__ import annotations

import argparse
import math
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


def _variant(packing: bool):
    from peft_framework.adapters import registry
    from peft_framework.adapters.lora import LoraConfig
    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.collator import make_collator

    model = tiny_llama(attn_implementation="sdpa", **BENCH_MODEL).train()
    registry.get("lora").inject(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = make_collator(packing, "causal_lm", 0)

    def step(batch: list[dict]) -> float:
        inputs = collate(batch)
        started = time.perf_counter()
        model(**inputs).loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - started

    return step


def main() -> None:
    import datasets

    from peft_framework.training.packing import pack_split

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--pack-batch", type=int, default=None, help="packs per step (default: --batch)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.pack_batch = args.pack_batch or args.batch
    torch.set_num_threads(args.threads)

    data = rows(args.rows)
    warm = rows(args.batch, seed=1)
    packs, stats = pack_split(datasets.Dataset.from_list(data), args.max_seq_len)
    packs = packs.to_list()
    real = sum(len(r["input_ids"]) for r in data)
    batches = {
        "padded": [data[i : i + args.batch] for i in range(0, len(data), args.batch)],
        "packed": [packs[i : i + args.pack_batch] for i in range(0, len(packs), args.pack_batch)],
    }
    computed = {
        "padded": sum(len(b) * max(len(r["input_ids"]) for r in b) for b in batches["padded"]),
        "packed": sum(len(b) * max(len(r["input_ids"]) for r in b) for b in batches["packed"]),
    }
    steps = {"padded": _variant(False), "packed": _variant(True)}
    warm_packs = pack_split(datasets.Dataset.from_list(warm), args.max_seq_len)[0].to_list()
    steps["padded"](warm)
    steps["packed"](warm_packs[: args.pack_batch])
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    for i in range(max(len(b) for b in batches.values())):
        for name, step in steps.items():
            if i < len(batches[name]):
                times[name].append(step(batches[name][i]))
    print(
        f"{args.rows} rows, {real} real tokens; packed into {stats['packs']} packs of <= {args.max_seq_len} "
        f"({stats['fill_ratio']:.0%} filled)"
    )
    rate = {}
    for name in ("padded", "packed"):
        rate[name] = real / sum(times[name])
        print(
            f"{name}: {len(times[name])} steps, {sum(times[name]):.1f} s, {real / computed[name]:.0%} of the "
            f"computed tokens real, {rate[name]:.0f} non-padding tokens/s"
        )
    print(f"packed / padded: {rate['packed'] / rate['padded']:.2f}x (same rows, one epoch each)")


if __name__ == "__main__":
    main()
