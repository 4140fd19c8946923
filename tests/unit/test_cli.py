"""`peft-framework` commands: output, exit codes, and user errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from peft_framework import cli
from peft_framework.config import config_hash, load_config
from peft_framework.errors import DataError

REPO = Path(__file__).resolve().parents[2]
LORA = str(REPO / "params" / "lora.yaml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------- validate
def test_validate_prints_ok_and_the_config_hash(capsys) -> None:
    code, out, err = run(capsys, "validate", LORA)
    assert code == 0 and err == ""
    assert out == f"OK {config_hash(load_config(LORA))}\n"


def test_validate_applies_overrides_and_prints_section_hashes(capsys) -> None:
    code, out, _ = run(capsys, "validate", LORA, "adapter.r=4", "train.max_steps=2", "--hashes")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"OK {config_hash(load_config(LORA, ['adapter.r=4', 'train.max_steps=2']))}"
    assert [line.split()[0] for line in lines[1:]] == ["model", "data", "adapter", "train", "eval", "export"]


def test_validate_shows_each_warning_once_as_a_line(capsys) -> None:
    code, out, err = run(capsys, "validate", str(REPO / "params.yaml"))
    assert code == 0 and out.startswith("OK ")
    warning_lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning_lines) == len(err.splitlines()) <= 1


def test_invalid_config_exits_2_with_one_line_per_problem(capsys, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_size: 0\n  lerning_rate: 1\nadapter:\n  type: lroa\n")
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"error: {path}: invalid config: 3 problems"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  - adapter.type",
        "  - train.lerning_rate",
        "  - train.batch_size",
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["validate", "does-not-exist.yaml"], "error: config file not found"),
        (["validate", LORA, "adapter.r"], "expected KEY=VALUE"),
        (["render", LORA, "adapter.alpah=4"], "did you mean 'adapter.alpha'"),
        (["prepare", LORA, "--root", ".", "data.kindd=text"], "did you mean 'data.kind'"),
        (["train", LORA, "train.epochs=0"], "train.epochs: got 0"),
        (
            ["generate", "--base", "builtin:tiny-llama", "--adapter", "nodir", "--prompt", "hi"],
            "expected NAME=DIR",
        ),
        (["generate", "--base", "x", "--adapter", "a=d", "--use", "b", "--prompt", "hi"], "--use: 'b'"),
        (
            ["generate", "--base", "x", "--adapter", "a=d", "--adapter", "a=e", "--prompt", "hi"],
            "given twice",
        ),
    ],
)
def test_user_errors_exit_2_without_traceback(capsys, argv: list[str], fragment: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["validate"],
        ["frobnicate"],
        ["generate", "--prompt", "x"],
        ["generate", "--base", "m", "--prompt", "x", "--max-new-tokens", "0"],
    ],
)
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage: peft-framework" in err


def test_help_and_version_exit_0(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in (
        "validate",
        "render",
        "schema",
        "adapters",
        "prepare",
        "train",
        "evaluate",
        "export",
        "sample-data",
        "generate",
    ):
        assert command in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("peft-framework ")


# --------------------------------------------------------------------------------- render/schema
def test_render_round_trips_through_load_config(capsys, tmp_path: Path) -> None:
    overrides = ["adapter.target_modules=[q_proj,v_proj]", "train.learning_rate=3e-5", "model.revision='1e5'"]
    code, out, _ = run(capsys, "render", LORA, *overrides)
    assert code == 0
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(out)
    assert load_config(rendered) == load_config(LORA, overrides)
    assert yaml.safe_load(out)["adapter"]["target_modules"] == ["q_proj", "v_proj"]


def test_schema_is_json_schema_that_accepts_params(capsys) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(Path(LORA).read_text()), schema)


def test_adapters_table_and_json(capsys) -> None:
    code, out, _ = run(capsys, "adapters")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["TYPE", "PEFT"]
    lora = next(r for r in rows if r.startswith("lora "))
    assert lora.split()[1:4] == ["LORA", "yes", "built-in"]
    code, out, _ = run(capsys, "adapters", "--json")
    data = {row["type"]: row for row in json.loads(out)}
    assert data["lora"]["peft_type"] == "LORA" and data["lora"]["mergeable"] is True
    assert data["lora"]["origin"] == "built-in" and data["lora"]["description"]


# ---------------------------------------------------------------------------------------- stages
def test_stage_command_passes_config_and_root_and_prints_the_summary(
    capsys, monkeypatch, tmp_path: Path
) -> None:
    from peft_framework import evaluation

    seen: dict[str, Any] = {}

    def evaluate(config, root="."):
        seen.update(config=config, root=root)
        return {"report": str(Path(root) / config.eval.report_path), "accuracy": 0.5}

    monkeypatch.setattr(evaluation, "evaluate", evaluate, raising=False)
    code, out, _ = run(capsys, "evaluate", LORA, "eval.max_samples=3", "--root", str(tmp_path))
    assert code == 0
    assert json.loads(out) == {"report": str(tmp_path / "reports/eval.json"), "accuracy": 0.5}
    assert seen["config"] == load_config(LORA, ["eval.max_samples=3"]) and seen["root"] == str(tmp_path)


def test_stage_user_error_exits_2(capsys, monkeypatch) -> None:
    from peft_framework import export

    def fail(config, root="."):
        raise DataError("data.output_dir: 'data/prepared' does not exist; run the prepare stage first")

    monkeypatch.setattr(export, "export", fail, raising=False)
    code, out, err = run(capsys, "export", LORA)
    assert code == 2 and out == ""
    assert err == "error: data.output_dir: 'data/prepared' does not exist; run the prepare stage first\n"


def test_generate_passes_its_arguments(capsys, monkeypatch) -> None:
    import types

    seen: dict[str, Any] = {}

    def generate_cli(base, adapters, use, prompts, max_new_tokens):
        seen.update(base=base, adapters=adapters, use=use, prompts=prompts, max_new_tokens=max_new_tokens)
        return [p.upper() for p in prompts]

    monkeypatch.setitem(
        sys.modules, "peft_framework.inference", types.SimpleNamespace(generate_cli=generate_cli)
    )
    code, out, _ = run(
        capsys,
        "generate",
        "--base",
        "builtin:tiny-llama",
        "--adapter",
        "a=dir/a",
        "--adapter",
        "b=dir/b",
        "--use",
        "b",
        "--prompt",
        "hi",
        "--prompt",
        "there",
        "--max-new-tokens",
        "5",
        "--json",
    )
    assert code == 0 and json.loads(out) == ["HI", "THERE"]
    assert seen == {
        "base": "builtin:tiny-llama",
        "adapters": {"a": "dir/a", "b": "dir/b"},
        "use": "b",
        "prompts": ["hi", "there"],
        "max_new_tokens": 5,
    }


@pytest.mark.slow
def test_sample_data_then_prepare_for_real(capsys, tmp_path: Path) -> None:
    """The real data stage through the CLI on the built-in samples and the tiny model."""
    code, out, _ = run(capsys, "sample-data", "--out", str(tmp_path / "data" / "raw"))
    assert code == 0 and "instructions.jsonl" in json.loads(out)
    code, out, err = run(capsys, "prepare", LORA, "--root", str(tmp_path), "data.split.seed=7")
    assert code == 0, err
    summary = json.loads(out)
    assert isinstance(summary, dict) and summary
    assert (tmp_path / "data" / "prepared").is_dir() and (tmp_path / "reports" / "data.json").is_file()


# ------------------------------------------------------------------------------- as a process
@pytest.mark.slow
def test_module_and_console_script_run_as_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "peft_framework", "validate", LORA, "adapter.r=4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip() == f"OK {config_hash(load_config(LORA, ['adapter.r=4']))}"
    )  # same hash in a new process
    script = Path(sys.executable).with_name("peft-framework")
    if not script.exists():  # pragma: no cover - the package is always pip-installed in CI
        pytest.fail(f"console script not installed next to {sys.executable}; pip install -e .")
    proc = subprocess.run(
        [str(script), "validate", str(bad)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "train.epochs: got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
