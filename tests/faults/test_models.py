"""Untrusted and misplaced base models (cases 7 and 8 of issue 18): one pickle rule for every stage, a clear
message for a missing local directory, relative paths resolved against --root; and evaluate's two outputs
name the adapter they belong to."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from faultkit import Run, summary

from peft_framework.io import file_sha256


def _pickle_only_model(path: Path) -> Path:
    from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

    model = tiny_llama()
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def test_pickle_weights_are_refused_everywhere_unless_opted_in(cli: Run, tmp_path: Path) -> None:
    base = _pickle_only_model(tmp_path / "base")
    code, _, err = cli("generate", None, "--base", str(base), "--prompt", "hi", "--max-new-tokens", "1")
    assert code == 2 and "has only pickle weights (pytorch_model.bin)" in err
    assert "model.allow_pickle_weights" in err and "Traceback" not in err

    opted_in = tmp_path / "model.yaml"
    opted_in.write_text(f"model:\n  name_or_path: {base}\n  allow_pickle_weights: true\n")
    code, out, err = cli("generate", None, "--base", str(opted_in), "--prompt", "hi", "--max-new-tokens", "1")
    assert code == 0, err


@pytest.mark.slow
def test_train_and_export_follow_the_same_pickle_rule(cli: Run, project_copy: Path) -> None:
    base = _pickle_only_model(project_copy / "base")
    for command in ("train", "export"):
        code, _, err = cli(command, project_copy, f"model.name_or_path={base}")
        assert code == 2 and "Traceback" not in err, (command, err)
        assert "model.allow_pickle_weights" in err, (command, err)


def test_a_missing_local_model_dir_is_named_as_such(cli: Run) -> None:
    code, _, err = cli("generate", None, "--base", "./no-such-model", "--prompt", "hi")
    assert code == 2
    assert "model.name_or_path: cannot load './no-such-model': no such local model directory" in err
    assert "Repo id" not in err


@pytest.mark.slow
def test_a_relative_model_path_resolves_against_the_root(
    cli: Run, project_copy: Path, tmp_path: Path
) -> None:
    from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

    tiny_llama().save_pretrained(project_copy / "base")
    tiny_tokenizer().save_pretrained(project_copy / "base")
    assert not Path("base").exists(), "the test runs from a directory without it"
    code, out, err = cli("prepare", project_copy, "model.name_or_path=base")
    assert code == 0, err
    assert summary(out)["rows"]["kept"] > 0


@pytest.mark.slow
def test_evaluate_outputs_name_the_adapter_they_score(cli: Run, project_copy: Path) -> None:
    code, _, err = cli("evaluate", project_copy)
    assert code == 0, err
    report = json.loads((project_copy / "reports/plots/manifest.json").read_text())  # eval.plots_dir
    metrics = json.loads((project_copy / "reports/eval.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values()), "eval.json holds numbers only"
    predictions = project_copy / "reports/eval_predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    adapter = file_sha256(project_copy / "models/adapter/adapter_model.safetensors")  # the weights
    assert report["adapter_sha256"] == adapter and {r["adapter_sha256"] for r in rows} == {adapter}
    assert report["predictions_sha256"] == hashlib.sha256(predictions.read_bytes()).hexdigest()
