"""The frozen base's input gradient `g @ W` in half precision on this CPU, against the same product in fp32.

    python bench/half_gemm.py [--tokens 512] [--out 1376] [--in 512] [--threads 2] [--repeats 3]

Why `fast.half_input_grad` exists: on a CPU without native bf16/fp16 GEMM (AVX2), torch emulates the half
GEMM and, with W in its stored (out, in) layout, that is many times slower than an fp32 product of the
same values (casts included). Prints the best of `--repeats` timings in ms for: the half mm as autograd's
`linear` backward runs it, the same with W transposed in memory, fp32 with the casts, what
`fast.half_input_grad` runs, and autograd's `linear` forward + backward in bf16. Reports; never asserts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from peft_framework.adapters.lora import fast


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=int, default=1376)
    ap.add_argument("--in", dest="n_in", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    for dtype in (torch.bfloat16, torch.float16):
        g = torch.randn(args.tokens, args.out).to(dtype)
        w = torch.randn(args.out, args.n_in).to(dtype)
        w_t = w.t().contiguous()
        rows = {
            "mm(g, W), W as stored": lambda g=g, w=w: torch.mm(g, w),
            "mm(g, W), W transposed in memory": lambda g=g, w_t=w_t: torch.mm(g, w_t.t()),
            "fp32 mm with the casts": lambda g=g, w=w: torch.mm(g.float(), w.float()).to(g.dtype),
            "fast.half_input_grad": lambda g=g, w=w: fast.half_input_grad(g, w),
        }
        if dtype == torch.bfloat16:
            x = torch.randn(args.tokens, args.n_in).to(dtype).requires_grad_()

            def linear_fwd_bwd(x=x, w=w, g=g) -> None:
                torch.nn.functional.linear(x, w).backward(g)

            rows["autograd linear fwd + bwd"] = linear_fwd_bwd
        for name, fn in rows.items():
            print(f"{str(dtype).removeprefix('torch.'):8} {name:34} {best_ms(fn, args.repeats):8.1f} ms")


if __name__ == "__main__":
    main()
