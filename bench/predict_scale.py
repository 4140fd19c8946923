"""`peft-framework predict` on a JSONL file of N rows (default 10,000) with the demo classifier: wall time and
peak RSS, against the anchor measured in the same run, a plain transformers loop over the merged export.

    python bench/predict_scale.py --root DIR          # DIR: a project after `dvc repro` (models/adapter, merged)
    python bench/predict_scale.py --build             # builds one in a temp dir: the shipped params.yaml, 24 steps

Each variant runs in its own process (its peak RSS is that process's, from wait4): `predict params.yaml
--input ... --output ...` with the adapter on its base (the default) and with `--use merged`, and the anchor
(AutoModelForSequenceClassification + AutoTokenizer on models/merged, the same batch size and max length,
rows in file order, probabilities written as JSON Lines). Ratios are predict / anchor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ANCHOR = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
src, dst, model_dir, batch, max_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
rows = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
out = []
with torch.no_grad():
    for i in range(0, len(rows), batch):
        enc = tok([r["text"] for r in rows[i:i + batch]], padding=True, truncation=True, max_length=max_len,
                  return_tensors="pt")
        out.extend(model(**enc).logits.softmax(-1).tolist())
with open(dst, "w", encoding="utf-8") as f:
    for r, p in zip(rows, out):
        f.write(json.dumps({**r, "probabilities": p}) + "\\n")
"""


def build(root: Path, steps: int) -> None:
    import yaml

    from peft_framework.config import load_config
    from peft_framework.data import prepare
    from peft_framework.data.samples import write_samples
    from peft_framework.export import export
    from peft_framework.training import train

    write_samples(root / "data/raw")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(max_steps=steps, report_to="none", eval_steps=None, save_steps=1000)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(root / "params.yaml")
    for stage in (prepare, train, export):
        stage(config, root)


def write_rows(root: Path, path: Path, n: int) -> None:
    """N rows cycling through the sample reviews' texts (the sample file's deliberately broken rows skipped)."""
    texts = []
    for line in (root / "data/raw/classification.jsonl").read_bytes().decode("utf-8", "replace").splitlines():
        try:
            text = json.loads(line).get("text")
        except (ValueError, AttributeError):
            continue
        if isinstance(text, str) and text.strip():
            texts.append(text)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "text": texts[i % len(texts)]}) + "\n")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    env = _env()
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="a project after dvc repro (default: --build one)")
    parser.add_argument(
        "--build", action="store_true", help="train the demo classifier first (in --root or a temp dir)"
    )
    parser.add_argument("--train-steps", type=int, default=24)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        root = args.root.resolve() if args.root else Path(tmp) / "project"
        if args.build or args.root is None:
            root.mkdir(exist_ok=True)
            # in a child process: this one stays small, since a child's peak RSS counts what it inherited
            # from the fork before its exec
            code = f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); import predict_scale as b; "
            code += f"b.build(b.Path({str(root)!r}), {args.train_steps})"
            subprocess.run([sys.executable, "-c", code], check=True, env=_env(), stdout=subprocess.DEVNULL)
        rows = Path(tmp) / "rows.jsonl"
        write_rows(root, rows, args.rows)
        import yaml

        max_len = yaml.safe_load((root / "params.yaml").read_text())["data"]["max_seq_len"]
        py = sys.executable
        predict = [py, "-m", "peft_framework.cli", "predict", "params.yaml", "--input", str(rows)]
        variants = {
            "anchor (transformers, merged)": [
                py, "-c", ANCHOR, str(rows), f"{tmp}/anchor.jsonl", "models/merged", str(args.batch_size), str(max_len)
            ],
            "predict --use adapter": [*predict, "--output", f"{tmp}/a.jsonl", "--batch-size", str(args.batch_size)],
            "predict --use merged": [
                *predict, "--output", f"{tmp}/m.jsonl", "--use", "merged", "--batch-size", str(args.batch_size)
            ],
        }  # fmt: skip
        results = {name: measure(cmd, root) for name, cmd in variants.items()}
        anchor_s, anchor_mb = next(iter(results.values()))
        print(
            f"{args.rows} rows, batch {args.batch_size}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        )
        print(
            f"{'variant':32} {'seconds':>8} {'rows/s':>8} {'peak RSS MB':>12} {'time/anchor':>12} {'RSS/anchor':>11}"
        )
        for name, (seconds, mb) in results.items():
            print(
                f"{name:32} {seconds:8.1f} {args.rows / seconds:8.0f} {mb:12.0f} "
                f"{seconds / anchor_s:12.2f} {mb / anchor_mb:11.2f}"
            )
        with open(f"{tmp}/a.jsonl", encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        print(f"predict wrote {lines} rows")


if __name__ == "__main__":
    main()
