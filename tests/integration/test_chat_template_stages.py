"""A custom data.chat_template through the real stages: prepare formats with it and hashes it, train saves
it with the adapter's tokenizer (and refuses data prepared with another text), inspect-data shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from peft_framework.cli import main
from peft_framework.config import load_config
from peft_framework.data import prepare
from peft_framework.errors import DataError
from peft_framework.models.saved_tokenizer import load_saved_tokenizer
from peft_framework.training.stage import train

TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{- 'Bot: ' -}}{% generation %}{{- m['content'] + eos_token -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}{{- 'You: ' + m['content'] + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Bot: ' -}}{%- endif -%}"
)
CONFIG = {
    "data": {
        "source": "raw.jsonl",
        "chat_template": "templates/mine.jinja",
        "split": {"validation": 0.0, "test": 0.0},
    },
    "adapter": {"type": "lora", "r": 2, "target_modules": ["q_proj"]},
    "train": {"max_steps": 1, "batch_size": 4, "save_steps": 1, "report_to": "none", "packing": True},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat_template_project")
    rows = [{"instruction": f"Say {i}", "output": f"{i} {i}"} for i in range(12)]
    lines = [json.dumps(r) for r in rows] + ['{"instruction": "no output"}']  # one row to reject
    (root / "raw.jsonl").write_text("\n".join(lines) + "\n")
    (root / "templates").mkdir()
    (root / "templates" / "mine.jinja").write_text(TEMPLATE)
    (root / "params.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


@pytest.mark.slow
def test_custom_template_from_prepare_to_the_adapter_tokenizer(project: Path, capsys) -> None:
    config = load_config(project / "params.yaml")
    first = prepare(config, project)
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["format"]["template"] == "chat_template"
    assert manifest["format"]["chat_template"] == TEMPLATE
    assert manifest["format"]["chat_template_setting"] == "templates/mine.jinja"
    assert manifest["tokenizer"]["source"] == "code" and manifest["tokenizer"]["sha256"]

    # what the model trains on, as a user sees it piped: the custom turns, the answers marked
    assert main(["inspect-data", str(project / "params.yaml"), "--root", str(project), "--rows", "2"]) == 0
    shown = capsys.readouterr().out
    assert "You: Say" in shown and "Bot: ⟦" in shown and "</s>⟧" in shown and "trained" in shown
    assert "rejected: 1 rows" in shown and "missing_field" in shown

    summary = train(config, project)
    saved = load_saved_tokenizer(summary["output_dir"])
    assert saved.chat_template == TEMPLATE  # evaluate and export read the tokenizer saved here

    # the template's text is part of the data hash; a changed file makes the prepared data stale
    (project / "templates" / "mine.jinja").write_text(TEMPLATE.replace("Bot: ", "AI: "))
    with pytest.raises(DataError, match="data.chat_template: 'templates/mine.jinja'"):
        train(config, project)
    assert prepare(config, project)["config_sha256"] != first["config_sha256"]


def test_inspect_data_without_prepared_data_says_to_prepare(project: Path, capsys) -> None:
    args = ["inspect-data", str(project / "params.yaml"), "--root", str(project), "data.output_dir=none"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.output_dir: 'none' holds no prepared data") and "prepare" in err
