"""Vision rows at scale (issue 24): prepare's heap on >= 20k image rows, the collator (processor per batch)
against the train step, and the activations a frozen vision tower keeps with and without autograd.

    python bench/vlm.py --rows 20000 [--batch 8] [--steps 20] [--json out.json]
    python bench/vlm.py --memory-only --family gemma3     # step 4 only, on another tiny family

1. draws `--rows` shape images (PIL, 32x32 PNG) and their jsonl into a temp dir;
2. runs `prepare` (params/vlm.yaml, builtin:tiny-vlm) in a child process and samples its `RssAnon` (the
   heap, without memory-mapped Arrow pages) every 0.1 s: `prepare_heap_peak_gb`;
3. on the prepared train split, times the collator (decode image bytes + processor) per batch against one
   training step (forward + backward + AdamW) of the tiny VLM with LoRA + projector: `loader_step_ratio`
   (< 1: one loader process keeps up with training; dataloader workers divide it further);
4. sums the bytes autograd saves for backward during one training forward (saved-tensor hooks), with the
   vision tower under autograd and without (`models/vlm.freeze_vision_graph`), for the plain model and
   with input grads enabled as transformers does for gradient checkpointing (`enable_input_require_grads`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_rows(base: Path, rows: int) -> None:
    from peft_framework.data.vision_samples import COLOURS, SHAPES, draw_shape, row

    rng = random.Random(0)
    (base / "images").mkdir(parents=True)
    with open(base / "shapes.jsonl", "w") as f:
        for i in range(rows):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            name = f"images/{i:06d}.png"
            draw_shape(colour, shape, rng).save(base / name)
            f.write(json.dumps(row(name, colour)) + "\n")


def rss_anon(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


PREPARE = """
import os, sys
from peft_framework.config.loading import load_config
from peft_framework.data.stage import prepare
print(prepare(load_config(sys.argv[1], sys.argv[2:]), os.getcwd())["rows"])
"""


def run_prepare(root: Path) -> dict:
    overrides = ["data.source=data/vision", "data.split.validation=0.0", "data.split.test=0.01"]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", PREPARE, str(REPO / "params" / "vlm.yaml"), *overrides],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = rss_anon(child.pid)
    peak = [base]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], rss_anon(child.pid))
            time.sleep(0.1)

    started = time.perf_counter()
    thread = threading.Thread(target=sample)
    thread.start()
    out, _ = child.communicate()
    thread.join()
    assert child.returncode == 0, out
    return {
        "prepare_seconds": round(time.perf_counter() - started, 1),
        "prepare_heap_peak_gb": round(peak[0] / 2**30, 3),
        "prepare_rows": out.strip().splitlines()[-1],
    }


FAMILY = ["llava"]  # --family
# the projector trained whole, as params/vlm.yaml; Qwen2-VL's (visual.merger) lies inside the vision tower,
# which would then train: the memory figures there are for LoRA on the language model alone
PROJECTOR = {"llava": ["multi_modal_projector"], "gemma3": ["multi_modal_projector"], "qwen2_vl": None}


def model_with_adapter():
    from peft_framework.adapters import get_adapter
    from peft_framework.adapters.lora import LoraConfig
    from peft_framework.models.tiny_vlm import tiny_vlm

    model, processor = tiny_vlm(FAMILY[0])
    get_adapter("lora").inject(model, LoraConfig(r=8, alpha=16, modules_to_save=PROJECTOR[FAMILY[0]]))
    return model.train(), processor


def loader_vs_step(root: Path, batch: int, steps: int) -> dict:
    import datasets
    import torch

    from peft_framework.models.vision_batch import VisionCollator
    from peft_framework.models.vlm import freeze_vision_graph

    train = datasets.load_from_disk(str(root / "data/prepared"))["train"]
    model, processor = model_with_adapter()
    freeze_vision_graph(model)
    collator = VisionCollator(processor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    collate_s = step_s = 0.0
    for s in range(steps + 1):
        rows = [train[i] for i in range(s * batch, (s + 1) * batch)]
        t0 = time.perf_counter()
        inputs = collator(rows)
        t1 = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        t2 = time.perf_counter()
        if s:  # the first step warms up
            collate_s += t1 - t0
            step_s += t2 - t1
    return {
        "collate_ms_per_batch": round(1000 * collate_s / steps, 2),
        "train_step_ms": round(1000 * step_s / steps, 2),
        "loader_step_ratio": round(collate_s / step_s, 3),
    }


def saved_bytes(frozen: bool, input_grads: bool, batch: int) -> int:
    import torch
    from PIL import Image

    from peft_framework.models.vision_batch import VisionCollator
    from peft_framework.models.vlm import freeze_vision_graph

    model, processor = model_with_adapter()
    if input_grads:
        model.enable_input_require_grads()
    if frozen:
        freeze_vision_graph(model)
    rows = []
    for i in range(batch):
        img = Image.new("RGB", (32, 32), (i * 20, 0, 0))
        text = processor.apply_chat_template(
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ],
            tokenize=False,
        )
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        enc = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        labels = [-100] * (len(enc) - 4) + enc[-4:]
        rows.append({"text": text, "images": [{"bytes": buf.getvalue()}], "input_ids": enc, "labels": labels})
    inputs = VisionCollator(processor)(rows)
    total = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**inputs).loss
    loss.backward()
    return total[0]


def vision_memory(batch: int) -> dict:
    out = {}
    for input_grads in (False, True):
        name = "input_grads" if input_grads else "plain"
        with_graph = saved_bytes(False, input_grads, batch)
        without = saved_bytes(True, input_grads, batch)
        out[f"saved_mb_{name}_tower_autograd"] = round(with_graph / 2**20, 3)
        out[f"saved_mb_{name}_tower_no_grad"] = round(without / 2**20, 3)
        out[f"saved_fraction_{name}"] = round(without / with_graph, 3) if with_graph else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--family", choices=sorted(PROJECTOR), default="llava")
    parser.add_argument("--memory-only", action="store_true", help="only the vision-tower memory (step 4)")
    args = parser.parse_args()
    if args.family != "llava" and not args.memory_only:
        parser.error("--family other than llava: with --memory-only (prepare runs params/vlm.yaml's model)")
    FAMILY[0] = args.family
    sys.path[:0] = [str(REPO / "src"), str(REPO)]
    import torch

    torch.set_num_threads(1)
    result: dict = {"family": args.family}
    if not args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            t0 = time.perf_counter()
            write_rows(root / "data" / "vision", args.rows)
            result.update(rows=args.rows, draw_seconds=round(time.perf_counter() - t0, 1))
            result.update(run_prepare(root))
            result.update(loader_vs_step(root, args.batch, args.steps))
    result.update(vision_memory(args.batch))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
