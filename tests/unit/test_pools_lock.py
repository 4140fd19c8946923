"""flows/pools.py's dvc.lock handling: entries from other machines merged in pipeline order, DVC's format."""

from __future__ import annotations

from pathlib import Path

import yaml
from flows.pools import POOLS, read_lock, write_lock
from tasks.stages import ORDER


def test_every_stage_has_a_pool_and_a_deployment_there() -> None:
    assert list(POOLS) == list(ORDER)
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    deployed = {d["name"]: d for d in spec["deployments"] if d["entrypoint"] == "flows/pools.py:pool_stage"}
    assert set(deployed) == set(ORDER)
    for stage, d in deployed.items():
        assert d["work_pool"]["name"] == POOLS[stage] and d["parameters"] == {"stage": stage}
        assert d["pull"] == []  # runs in the worker's checkout (the pool's working_dir)


def test_lock_entries_merge_in_pipeline_order(tmp_path: Path) -> None:
    assert read_lock(tmp_path) == {}
    train = {"cmd": "python -m flows.stage train", "outs": [{"path": "models/adapter", "md5": "a.dir"}]}
    prepare = {"cmd": "python -m flows.stage prepare", "outs": [{"path": "data/prepared", "md5": "p.dir"}]}
    write_lock(tmp_path, {"train": train})
    write_lock(tmp_path, {"prepare": prepare})
    data = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert data["schema"] == "2.0"
    assert list(data["stages"]) == ["prepare", "train"]
    assert read_lock(tmp_path) == {"prepare": prepare, "train": train}
    write_lock(tmp_path, {"train": {**train, "outs": []}})  # a newer entry replaces the old one
    assert read_lock(tmp_path)["train"]["outs"] == []
