"""A third-party adapter type, pip-installed from its own package (tests/plugin_example), is found through
the `peft_framework.adapters` entry-point group and used from a YAML config with no framework change.

The package is installed with pip into a temporary directory put on PYTHONPATH of fresh subprocesses,
rather than into the shared environment: concurrent test runs never see it, and nothing is left behind
if the run is killed. Entry-point discovery is the same as for a site-packages install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_example"

CONFIG_YAML = """\
model:
  name_or_path: builtin:tiny-llama
data:
  source: data/raw/rows.jsonl
  kind: instruction
adapter:
  type: scale
  target_modules: [q_proj, v_proj]
  init_scale: 1.0
train:
  learning_rate: 0.05
  max_steps: 1
  batch_size: 2
  report_to: none
"""

# Runs in a fresh interpreter that sees the plug-in only through PYTHONPATH: the framework's own stages,
# driven by the YAML file, with nothing plug-in specific in the calling code.
CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from peft_framework.adapters import get_adapter, load_adapter, registry
    from peft_framework.config import load_config
    from peft_framework.data import prepare
    from peft_framework.models.loading import load_base_model
    from peft_framework.training import train

    root = Path(".")
    raw = root / "data/raw/rows.jsonl"
    raw.parent.mkdir(parents=True)
    with raw.open("w") as f:
        for i in range(60):  # enough rows that every split gets some
            f.write(json.dumps({"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i + 1)))}) + "\\n")

    config = load_config("params.yaml")
    prepare(config, root)
    summary = train(config, root)

    out = root / config.train.output_dir
    fresh = load_base_model(config.model)
    method, loaded = load_adapter(fresh, out)
    scales = {n: p for n, p in fresh.named_parameters() if ".scale." in n}
    source = registry.available()["scale"]
    print(json.dumps({
        "origin": source.origin,
        "target": source.target,
        "method_class": type(get_adapter(config.adapter.type)).__name__,
        "config_class": type(config.adapter).__name__,
        "global_step": summary["global_step"],
        "loaded_method": method.name,
        "loaded_init_scale": loaded.init_scale,
        "scales": sorted(scales),
        "scales_moved": all(not torch.equal(p, torch.ones_like(p)) for p in scales.values()),
        "saved_config": json.loads((out / "adapter_config.json").read_text()),
        "files": sorted(p.name for p in out.iterdir()),
    }))
    """
)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for subprocesses in which the plug-in is pip-installed (in a temporary target dir)."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    # build from a copy: pip's in-tree build would leave build/ and *.egg-info in the repository
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = work / "site"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    }  # tiny model: one thread is faster
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(src),
        ],
        env,
        work,
    )
    assert list(site.glob("peft_framework_scaled_adapter-*.dist-info/entry_points.txt"))
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_plugin_is_listed_by_the_cli(plugin_env: dict[str, str], tmp_path: Path) -> None:
    result = _run([sys.executable, "-m", "peft_framework", "adapters", "--json"], plugin_env, tmp_path)
    rows = {row["type"]: row for row in json.loads(result.stdout)}
    assert rows["scale"]["origin"] == "peft-framework-scaled-adapter 0.1.0"
    assert rows["scale"]["peft_type"] is None
    assert rows["lora"]["origin"] == "built-in"
    # this interpreter, without the plug-in on its path, has no such type: the install is what added it
    from peft_framework.adapters import registry

    assert "scale" not in registry.available()


@pytest.mark.slow
def test_plugin_trains_one_step_from_yaml(plugin_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(CONFIG_YAML)
    (tmp_path / "child.py").write_text(CHILD)
    result = _run([sys.executable, "child.py"], plugin_env, tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["origin"] == "peft-framework-scaled-adapter 0.1.0"
    assert report["target"] == "peft_framework_scaled_adapter:ScaleMethod"
    assert (report["method_class"], report["config_class"]) == ("ScaleMethod", "ScaleConfig")
    assert report["global_step"] == 1
    # the trained adapter: one scale vector per (layer, q_proj|v_proj) under the adapter's name, all moved
    # away from their init
    assert report["scales"] == [
        f"model.layers.{i}.self_attn.{m}.scale.default" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
    assert report["scales_moved"] is True
    # the checkpoint: the framework's two files, a framework type key instead of peft_type
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(report["files"])
    saved = report["saved_config"]
    assert saved["peft_framework_type"] == "scale" and "peft_type" not in saved
    assert saved["base_model_name_or_path"] == "builtin:tiny-llama"
    assert (report["loaded_method"], report["loaded_init_scale"]) == ("scale", 1.0)


REWARD_CHILD = textwrap.dedent(
    """
    import json
    from peft_framework.config.train_schema import TrainConfig
    from peft_framework.rewards import RewardScorer, load_rewards

    train = TrainConfig(rewards=[{"name": "starts_with_answer", "column": "label", "weight": 2.0}])
    (reward,) = load_rewards(train)
    result = RewardScorer([reward]).score(
        ["Say cat.", "Say dog."], [" Cat!", "a dog"], {"label": ["cat", "dog"]}, ["r1", "r2"]
    )
    try:
        TrainConfig(rewards=[{"name": "starts_with_answr"}])
    except Exception as exc:
        unknown = str(exc)
    print(json.dumps({
        "origin": reward.origin, "columns": list(reward.columns), "weight": reward.weight,
        "values": result.per_function["starts_with_answer"].tolist(), "total": result.total.tolist(),
        "unknown": unknown,
    }))
    """
)


@pytest.mark.slow
def test_plugin_reward_loads_through_the_entry_point(plugin_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(REWARD_CHILD)
    report = json.loads(
        _run([sys.executable, "child.py"], plugin_env, tmp_path).stdout.strip().splitlines()[-1]
    )
    assert report["origin"] == "peft-framework-scaled-adapter 0.1.0"
    assert report["columns"] == ["label"] and report["weight"] == 2.0
    assert report["values"] == [1.0, 0.0]
    assert report["total"] == [2.0, 0.0]
    # an unknown name lists what is installed, the plug-in's reward included
    assert "did you mean 'starts_with_answer'" in report["unknown"]
    assert "exact_match" in report["unknown"]
