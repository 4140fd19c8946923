"""A Prefect cache policy keyed on content, whose hits count only while the recorded outputs are intact.

The key of a stage run is a hash of:
  - the content of every input file/directory the stage reads (raw data, prepared data, adapter),
  - the hashes of the config sections the stage reads (`peft_framework.config.section_hash`),
  - the library code the stage runs and the task function's source,
  - for a base model in a local directory, its files' sizes and mtimes (cheap; models are large),
  - for prepare, the commit each `hf:` dataset's revision names (`peft_framework.data.hub`).

Prefect treats any stored record under the key as a hit. Here a record counts only if the outputs it
lists (path -> content hash) still exist with those hashes; otherwise the policy moves on to the next
generation of the key (`<stage>-<hash>-1`, `-2`, ...), so the task runs again and its fresh record is
found by later runs. A generation whose outputs were restored (e.g. `dvc checkout` of an older run) is
a hit again, which is right: its outputs are back exactly as recorded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy, TaskSource
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from prefect.results import get_result_store

import peft_framework
from peft_framework.config import section_hash
from peft_framework.config.schema import Config
from peft_framework.io import canonical_json_sha256
from tasks.fingerprint import content_hashes, resolve, source_sha256, stale_outputs, stat_signature
from tasks.stages import Stage, data_sources

PACKAGE_DIR = Path(peft_framework.__file__).resolve().parent


def key_material(stage: Stage, config: Config, root: Path) -> dict[str, Any]:
    """Everything a stage's result depends on, as JSON data (the key is its hash, plus the task source)."""
    material: dict[str, Any] = {
        "stage": stage.name,
        "inputs": content_hashes(root, stage.inputs(config, root)),
        "config": {section: section_hash(config, section) for section in stage.sections},
        "code": source_sha256(PACKAGE_DIR, stage.code),
    }
    if "model" in stage.sections:
        model_dir = resolve(root, config.model.name_or_path)
        if model_dir.is_dir():
            material["model_files"] = stat_signature(model_dir)
        elif not config.model.name_or_path.startswith("builtin:"):  # a hub id: the cached snapshot's commit
            from peft_framework.models.tokenizer_identity import hub_snapshot

            snapshot = hub_snapshot(config.model.name_or_path, config.model.revision)
            material["model_commit"] = snapshot[1] if snapshot else None
    if stage.name == "prepare":  # hf: datasets: the commit each revision names now (a moved branch re-runs)
        from peft_framework.data.hub import entry_commits

        commits = entry_commits(data_sources(config))
        if commits:
            material["data_commits"] = commits
    return material


@dataclass
class ValidatedOutputs(CachePolicy):
    """Cache policy for a stage task called as `task(config=Config, root=str)`."""

    stage: Stage | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        assert self.stage is not None, "ValidatedOutputs needs its stage"
        config: Config = inputs["config"]
        root = Path(inputs["root"]).resolve()
        material = key_material(self.stage, config, root)
        material["task_source"] = TaskSource().compute_key(task_ctx, inputs, flow_parameters)
        base = f"{self.stage.name}-{canonical_json_sha256(material)[:40]}"
        store = get_result_store()
        stale: list[str] = []
        for generation in itertools.count():
            key = f"{base}-{generation}"
            if not store.exists(key):
                if stale:
                    get_run_logger().info(
                        "Cached result of stage %r no longer matches its outputs (%s): running it again",
                        self.stage.name,
                        ", ".join(stale),
                    )
                return key
            stale = stale_outputs(root, (store.read(key).result or {}).get("outputs", {}))
            if not stale:
                return key
        raise AssertionError("unreachable")  # itertools.count() never ends
