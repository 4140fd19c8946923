"""The train stage under torchrun when `train.devices` x `train.nodes` > 1.

`dvc repro`, `flows.stage train` and the pipeline flows run stages in their own process; one training job
over several processes needs a launcher to start them. This runs

    torchrun --standalone --nproc_per_node D -m peft_framework train <resolved config> --root <root>

(`--nnodes N` instead of `--standalone` for several nodes; see training/distributed.py), waits for it and
reads the result back from the manifest the main process wrote. Already inside a launcher (someone ran
`torchrun ... -m flows.stage train`), the stage runs in-process as usual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from peft_framework.config.schema import Config
from peft_framework.errors import UserError
from peft_framework.training.distributed import launch_command, planned_world_size, under_launcher


def wanted(config: Config) -> bool:
    """True when the train stage must start its own processes."""
    return planned_world_size(config.train) > 1 and not under_launcher()


def _env() -> dict[str, str]:
    """The child processes import the same library as this one (this checkout's src/ first)."""
    import peft_framework

    src = str(Path(peft_framework.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return env


def train(config: Config, root: Path) -> dict[str, Any]:
    """Run `peft-framework train` under torchrun on the resolved config; the run's summary."""
    with tempfile.TemporaryDirectory(prefix="peft-launch-") as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        cmd = launch_command(config.train, ["peft_framework", "train", str(config_file), "--root", str(root)])
        print(f"train: launching {' '.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        reported = _user_error(proc.stderr)
        if reported is not None:  # a user mistake the processes reported (each prints it): raise it once
            raise UserError(reported[0], reported[1])
        raise RuntimeError(f"train: `{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    out_dir = Path(config.train.output_dir)
    out_dir = out_dir if out_dir.is_absolute() else root / out_dir
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    training = manifest["training"]
    return {
        "output_dir": str(out_dir),
        "global_step": training["global_step"],
        "train_loss": training["train_loss"],
        "eval_loss": training["eval_loss"],
        "world_size": training["world_size"],
        "resumed_from": training["resumed_from"],
        "adapter_sha256": manifest["adapter"]["sha256"],
        "manifest_path": str(out_dir / "manifest.json"),
        "launcher": " ".join(cmd[: cmd.index("-m")]),
    }


def _user_error(stderr: str) -> tuple[str, list[str]] | None:
    """The first `error: HEADLINE` block the CLI printed (its `  - problem` lines after it), if any."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            problems = []
            for follow in lines[i + 1 :]:
                if not follow.startswith("  - "):
                    break
                problems.append(follow[4:])
            return line[len("error: ") :], problems
    return None
