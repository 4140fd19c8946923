"""The pipeline layer without running a pipeline: dvc.yaml and prefect.yaml agree with the stage table,
project Prefect settings, cache fingerprints and keys, retry policy, artifact rendering."""

from __future__ import annotations

import ast
import errno
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml
from prefect.states import Failed
from tasks import settings
from tasks.cache import key_material
from tasks.fingerprint import expand, record_outputs, source_sha256, stale_outputs
from tasks.run import STAGE_TASKS, is_transient, retry_if_transient
from tasks.stages import ORDER, STAGES

from peft_framework.config.schema import Config, EvalConfig, TrainConfig
from peft_framework.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = re.compile(r"\$\{([^}]+)\}")


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def _render(entry: str, values: dict) -> str:
    return TEMPLATE.sub(lambda m: str(_lookup(values, m.group(1))), entry)


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def test_dvc_stages_match_the_stage_table():
    stages = _dvc_stages()
    assert tuple(stages) == (*ORDER, "promote")  # promote: the gate after the pipeline (test_promote_stage)
    defaults = Config().to_dict()
    for name, stage in STAGES.items():
        dvc = stages[name]
        assert dvc["cmd"] == f"python -m flows.stage {name}"
        assert dvc.get("params", []) == list(stage.sections), name
        deps = _paths(dvc.get("deps", []))
        code = [d for d in deps if d.startswith("src/")]
        assert code == [f"src/peft_framework/{c}" for c in stage.code], name
        inputs = [_render(d, defaults) for d in deps if not d.startswith("src/")]
        assert inputs == stage.inputs(Config(), ROOT), name
        written = [
            _render(p, defaults) for key in ("outs", "metrics", "plots") for p in _paths(dvc.get(key, []))
        ]
        declared = stage.outputs(Config())
        for path in written:
            assert any(_under(path, out) for out in declared), f"{name}: {path} not in {declared}"
        for out in declared:
            assert any(_under(path, out) for path in written), f"{name}: {out} not declared in dvc.yaml"


def _strings(data) -> list[str]:
    """Every key and value string in parsed YAML."""
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


def test_dvc_templates_resolve_from_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    keys = {key for text in _strings(dvc) for key in TEMPLATE.findall(text)}
    assert keys
    for key in keys:
        value = _lookup(params, key)
        assert isinstance(value, str), f"params.yaml {key} must be one path for dvc.yaml, got {value!r}"


def test_stage_code_paths_exist():
    package = ROOT / "src" / "peft_framework"
    for stage in STAGES.values():
        for rel in stage.code:
            assert (package / rel).exists(), f"{stage.name}: {rel}"


def test_prefect_deployment_is_the_pipeline_on_a_cron_schedule():
    from flows.pipeline import pipeline
    from flows.serve import deployment_spec, schedules

    spec = deployment_spec("nightly")
    path, func = spec["entrypoint"].split(":")
    assert (ROOT / path).is_file() and func == pipeline.fn.__name__
    assert set(spec["parameters"]) <= set(inspect.signature(pipeline.fn).parameters)
    [cron] = schedules(spec)
    assert cron.cron == "0 3 * * *" and cron.timezone == "UTC"
    assert "pull" not in yaml.safe_load((ROOT / "prefect.yaml").read_text())  # no machine-specific paths


def test_the_pipeline_flow_runs_the_stages_of_dvc_yaml_promote_included(tmp_path):
    """Issue 28: the flow (and so the `nightly` deployment) skipped the gate `dvc repro` runs. Its last step
    is the promote task, which writes exactly the promote stage's outputs from this run's reports."""
    import json

    from flows.pipeline import PIPELINE
    from tasks.run import promote_gate

    assert PIPELINE == tuple(_dvc_stages())
    dvc = _dvc_stages()["promote"]
    config = Config.model_validate(
        {"export": {"promote": {"metric": "accuracy", "min_delta": 0.1}}}
    )  # a merged export with parity
    (tmp_path / "reports").mkdir()
    (tmp_path / config.eval.report_path).write_text(
        json.dumps({"base.accuracy": 0.4, "adapter.accuracy": 0.9})
    )
    (tmp_path / config.export.report_path).write_text(
        json.dumps({"merged": 1, "parity_passed": 1, "parity_max_abs_diff": 0.0, "parity_atol": 1e-3})
    )
    result = promote_gate.fn(config, str(tmp_path))
    assert result["summary"]["promote"] is True
    written = _paths(dvc.get("outs", [])) + _paths(dvc.get("metrics", []))
    assert sorted(result["outputs"]) == sorted(written)
    assert json.loads((tmp_path / "reports/promote.json").read_text()) == {"promote": 1, "gain": 0.5}


def test_project_prefect_settings(monkeypatch):
    env = settings.env_defaults(settings._load_toml(settings.PREFECT_TOML))
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_HOME"] == str(ROOT / ".prefect")
    assert int(env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
    monkeypatch.setenv("PREFECT_HOME", "/somewhere/else")
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    settings.apply()
    assert os.environ["PREFECT_HOME"] == "/somewhere/else"  # the user's choice wins
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_outputs_stay_valid_until_missing_or_changed(tmp_path):
    out = tmp_path / "models" / "adapter"
    out.mkdir(parents=True)
    (out / "w.bin").write_bytes(b"weights")
    (tmp_path / "report.json").write_text("{}")
    recorded = record_outputs(tmp_path, ["models/adapter", "report.json", "never/written"])
    assert set(recorded) == {"models/adapter", "report.json"}
    assert stale_outputs(tmp_path, recorded) == []
    os.utime(out / "w.bin", ns=(1, 1))  # same bytes, new mtime (as after `dvc checkout`): still valid
    assert stale_outputs(tmp_path, recorded) == []
    (out / "w.bin").write_bytes(b"other!!")
    assert stale_outputs(tmp_path, recorded) == ["models/adapter (changed)"]
    (tmp_path / "report.json").unlink()
    assert stale_outputs(tmp_path, recorded) == ["models/adapter (changed)", "report.json (missing)"]


def test_code_hash_ignores_bytecode_but_not_sources(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("x = 1\n")
    before = source_sha256(tmp_path, ["pkg"])
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    assert source_sha256(tmp_path, ["pkg"]) == before
    (pkg / "template.jinja").write_text("{{ x }}")
    assert source_sha256(tmp_path, ["pkg"]) != before


def test_globs_expand_relative_to_root(tmp_path):
    (tmp_path / "raw").mkdir()
    for name in ("b.jsonl", "a.jsonl", "c.csv"):
        (tmp_path / "raw" / name).write_text("")
    assert expand(tmp_path, "raw/*.jsonl") == ["raw/a.jsonl", "raw/b.jsonl"]
    assert expand(tmp_path, "raw/c.csv") == ["raw/c.csv"]


def test_cache_key_follows_the_stage_sections_and_inputs(tmp_path):
    base = Config()
    other_eval = base.model_copy(update={"eval": EvalConfig(max_new_tokens=5)})
    other_train = base.model_copy(update={"train": TrainConfig(max_steps=3)})

    def material(stage: str, config: Config) -> dict:
        return key_material(STAGES[stage], config, tmp_path)

    assert material("prepare", other_eval) == material("prepare", base)
    assert material("train", other_eval) == material("train", base)
    assert material("evaluate", other_eval) != material("evaluate", base)
    assert material("prepare", other_train) == material("prepare", base)
    assert material("export", other_train) != material("export", base)
    before = material("train", base)
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "train.arrow").write_bytes(b"rows")
    assert material("train", base)["inputs"] != before["inputs"]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(errno.EBUSY, "busy"), True),
        (OSError(errno.ENOENT, "missing"), False),
        (FileNotFoundError("x"), False),
        (DataError("too many rejected rows"), False),
        (ConfigError("adapter.r: -1"), False),
        (ValueError("bug"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient
    assert retry_if_transient(STAGE_TASKS["train"], None, Failed(data=exc)) is transient


def test_eval_artifact_rows_pair_base_and_adapter():
    from flows.artifacts import comparison_rows, data_headline, markdown_table, parity_headline

    rows = comparison_rows({"base.loss": 2.5, "adapter.loss": 1.25, "delta.loss": -1.25, "samples": 8})
    assert rows[0] == {"metric": "loss", "base": "2.5", "adapter": "1.25", "delta": "-1.25"}
    assert rows[1]["metric"] == "samples" and rows[1]["adapter"] == "8"
    report = {"rows": {"read": 10, "kept": 9, "rejected": 1}}
    table = markdown_table("Data report", report, "reports/data.json", data_headline(report))
    assert "| rows.read | 10 |" in table and "| rows.kept | 9 |" in table
    assert "**10** rows read, **9** kept, **1** rejected." in table
    assert parity_headline(
        {"parity_passed": True, "parity_max_abs_diff": 1e-6, "parity_atol": 1e-3}
    ).startswith("**Parity passed**")
    assert parity_headline({"merged": False, "reason": "bottleneck"}).startswith("**Not merged**")


def _module_file(package_root: Path, module: str) -> Path | None:
    base = package_root.parent / module.replace(".", "/")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None  # an attribute (`from peft_framework.data import prepare`), not a module


def _imported_files(package_root: Path, start: str) -> set[Path]:
    """Files of the library that module `start` imports, directly or not (lazy imports included)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(package_root, module)
        if path is None:
            continue
        files.add(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("peft_framework")]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("peft_framework"):
                    todo += [base] + [f"{base}.{a.name}" for a in node.names]
    return files


def test_stage_code_deps_cover_everything_the_stage_imports():
    package_root = ROOT / "src" / "peft_framework"
    for stage in STAGES.values():
        module, func = stage.target.split(":")
        if module.startswith("tasks."):  # sample_data: a wrapper around the library's write_samples
            module = "peft_framework.data.samples"
        declared = [package_root / rel for rel in stage.code]
        imported = _imported_files(package_root, module) - {package_root / "__init__.py"}
        for path in imported:
            assert any(path == d or d in path.parents for d in declared), (
                f"stage {stage.name} imports {path.relative_to(package_root)}, not in its code deps {stage.code}"
            )
        for dep in declared:  # and no dep it never reaches
            assert any(path == dep or dep in path.parents for path in imported), f"{stage.name}: {dep} unused"
