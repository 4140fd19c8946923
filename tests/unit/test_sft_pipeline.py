"""pipelines/sft/stages.yaml (the SFT step of the preference demo) and pipelines/grpo-sft/stages.yaml (the GRPO
demo's warm start) stay in step with the root pipeline and the presets: the same commands and code deps as the
root prepare/train stages, the paths their SFT preset writes, and the adapter the demo's preset starts from (and
the root train stage's commented dep names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _stages(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["stages"]


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


@pytest.mark.parametrize(
    ("pipeline", "prefix", "preset", "demo"),
    [
        ("sft", "sft_", "params/dpo-sft.yaml", "dpo.yaml"),
        ("grpo-sft", "grpo_sft_", "params/grpo-sft.yaml", "grpo.yaml"),
    ],
)
def test_sft_stages_mirror_the_root_stages_on_the_sft_preset(
    pipeline: str, prefix: str, preset: str, demo: str
) -> None:
    root = _stages(ROOT / "dvc.yaml")
    sft = _stages(ROOT / "pipelines" / pipeline / "stages.yaml")
    sft = {name.removeprefix(prefix): stage for name, stage in sft.items()}
    sft = {f"sft_{name}": stage for name, stage in sft.items()}
    config = yaml.safe_load((ROOT / preset).read_text())
    for name in ("prepare", "train"):
        stage = sft[f"sft_{name}"]
        assert stage["wdir"] == "../.."
        assert stage["cmd"] == f"{root[name]['cmd']} --config {preset}"
        code = [d for d in _paths(root[name]["deps"]) if d.startswith("src/")]
        assert [d for d in _paths(stage["deps"]) if d.startswith("src/")] == code
        [params] = stage["params"]
        assert params == {preset: root[name]["params"]}
    data, train = config["data"], config["train"]
    assert _paths(sft["sft_prepare"]["deps"])[0] == data["source"]
    assert _paths(sft["sft_prepare"]["outs"]) == [
        data["output_dir"],
        data["rejected_path"],
        data["report_path"],
    ]
    assert _paths(sft["sft_train"]["deps"])[0] == data["output_dir"]
    outs = _paths(sft["sft_train"]["outs"])
    assert outs == [
        train["output_dir"],
        f"{train['metrics_dir']}/metrics.json",
        f"{train['metrics_dir']}/plots",
    ]
    init = yaml.safe_load((ROOT / "params" / demo).read_text())["train"]["init_adapter"]
    assert init == train["output_dir"]
    assert f"# - {init}" in (ROOT / "dvc.yaml").read_text()  # the link the demo uncomments
    assert not (
        ROOT / "pipelines" / pipeline / "dvc.yaml"
    ).exists()  # off by default: no stale stages for others
