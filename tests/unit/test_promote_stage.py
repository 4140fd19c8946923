"""The dvc.yaml `promote` stage (tasks/promote_stage.py): decides from the work tree's reports, writes a
numbers-only metric and a manifest with the reasons, and registers nothing (no git tags)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tasks.promote_stage import run

ROOT = Path(__file__).resolve().parents[2]
EVAL = {"base.loss": 0.7, "adapter.loss": 0.2, "base.accuracy": 0.4, "adapter.accuracy": 0.9}
EXPORT = {"parity_passed": 1, "parity_max_abs_diff": 1e-7, "parity_atol": 1e-3}


def _project(root: Path, promote: dict | None) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["export"]["promote"] = promote
    (root / "reports").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / params["eval"]["report_path"]).write_text(json.dumps(EVAL))
    (root / params["export"]["report_path"]).write_text(json.dumps(EXPORT))
    return root


def test_decision_as_numbers_and_reasons(tmp_path: Path) -> None:
    root = _project(tmp_path, {"metric": "accuracy", "min_delta": 0.6})
    decision = run(root, "params.yaml", "reports/promote.json", "reports/promote_decision.json")
    assert decision["promote"] is False
    metric = json.loads((root / "reports/promote.json").read_text())
    assert metric == {"promote": 0, "gain": pytest.approx(0.5)}
    manifest = json.loads((root / "reports/promote_decision.json").read_text())
    assert manifest["reasons"][0].startswith("FAILED: accuracy") and manifest["rules"]["min_delta"] == 0.6


def test_promotion_off_still_writes_the_outputs(tmp_path: Path) -> None:
    root = _project(tmp_path, None)
    run(root, "params.yaml", "reports/promote.json", "reports/promote_decision.json")
    assert json.loads((root / "reports/promote.json").read_text()) == {"promote": 0}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("dvc") is None and not (Path(sys.executable).parent / "dvc").exists(), reason="no dvc"
)
def test_dvc_repro_runs_the_gate_and_tags_nothing(tmp_path: Path) -> None:
    """The stage exactly as dvc.yaml declares it, through real `dvc repro` in a temporary git repo."""
    root = _project(tmp_path / "repo", {"metric": "loss", "min_delta": 0.1, "lower_is_better": True})
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["promote"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"promote": stage}}, sort_keys=False))
    for rel in ("tasks/promote_stage.py", "src/peft_framework/export/promote.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DVC_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }

    def sh(*args: str) -> str:
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        return proc.stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-q", "-m", "init")
    out = sh("dvc", "repro")
    assert "meets export.promote" in out and "ok: loss" in out
    shown = json.loads(sh("dvc", "metrics", "show", "--json"))
    [data] = [v["data"] for v in shown.values()]
    assert data["reports/promote.json"]["data"] == {"gain": pytest.approx(0.5), "promote": 1}
    assert sh("git", "tag").strip() == ""  # registering is `python -m tasks.promote`, not the stage
    assert "up to date" in sh("dvc", "repro")
