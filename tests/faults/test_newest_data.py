"""Faults in the newest data and model features (issue 27, items 7, 9, 10, 11, 15): chat templates that
raise, loop or flood on real rows; mixing weights and counts that cannot be met; packing with another
`data.max_seq_len` than the data was prepared with; QLoRA 4-bit evaluation on CPU; an MLflow store that
cannot be reached or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from faultkit import Run, new_project

from peft_framework.config.schema import ModelConfig

IDS = torch.tensor(
    [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111], [1, 84, 104, 101, 32, 99, 97, 116, 115, 33]]
)


# ------------------------------------------------------------------------------ 11: QLoRA 4-bit on CPU
def _eval_and_train_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits in eval mode (where bitsandbytes may repack weights for CPU) and in train mode (dequantizing)."""
    with torch.no_grad():
        evaluated = model.eval()(IDS).logits
        trained = model.train()(IDS).logits
    return evaluated, trained


@pytest.mark.parametrize(
    "model_config",
    [
        {"quantization": {"bits": 4}},  # the built-in tiny Llama: "N must be divisible by block_n"
        {"quantization": {"bits": 4}, "add_tokens": ["<tool>", "</tool>"]},
    ],
    ids=["builtin", "add_tokens"],
)
def test_a_4bit_base_evaluates_on_cpu(model_config: dict) -> None:
    pytest.importorskip("bitsandbytes")
    from peft_framework.models.loading import load_base_model

    model = load_base_model(ModelConfig(**model_config))
    evaluated, trained = _eval_and_train_logits(model)
    assert torch.isfinite(evaluated).all()
    torch.testing.assert_close(evaluated, trained)


def test_a_4bit_local_model_with_intermediate_352_evaluates_on_cpu(tmp_path: Path) -> None:
    """`shape '[64, 5]' is invalid for input of size 352` before: a model whose MLP width the packer rejects."""
    pytest.importorskip("bitsandbytes")
    from peft_framework.models.loading import load_base_model
    from peft_framework.models.tiny import tiny_llama

    tiny_llama(intermediate_size=352).save_pretrained(tmp_path / "model")
    model = load_base_model(ModelConfig(name_or_path=str(tmp_path / "model"), quantization={"bits": 4}))
    assert model.config.intermediate_size == 352 and model.is_loaded_in_4bit
    evaluated, trained = _eval_and_train_logits(model)
    torch.testing.assert_close(evaluated, trained)


# ------------------------------------------------------------------------------------------ 9: mixing
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{path: a.jsonl, weight: 1e9}",
            "data.source[0].weight: 1000000000.0; allowed: a number > 0 (finite",
        ),
        (
            "{path: a.jsonl, weight: .inf}",
            "data.source[0].weight: inf; allowed: a number > 0 (finite, at most 1000",
        ),
        (
            "{path: a.jsonl, count: 1e11}",
            "data.source[0].count: 100000000000.0; allowed: an integer >= 1 (at most",
        ),
        (
            "{path: a.jsonl, count: 100000000000}",
            "data.source[0].count: 100000000000; allowed: an integer >= 1",
        ),
    ],
)
def test_mixing_weights_and_counts_are_bounded_at_validate_time(
    cli: Run, tmp_path: Path, entry: str, message: str
) -> None:
    root = new_project(tmp_path / "p")
    code, _, err = cli("validate", None, str(root / "params.yaml"), f"data.source=[{entry}]")
    assert code == 2 and "Traceback" not in err
    assert message in err


def test_mixing_counts_adding_up_past_the_bound_are_refused(cli: Run, tmp_path: Path) -> None:
    root = new_project(tmp_path / "p")
    source = "data.source=[{path: a.jsonl, count: 60000000}, {path: b.jsonl, count: 60000000}]"
    code, _, err = cli("validate", None, str(root / "params.yaml"), source)
    assert code == 2 and "data.source: the counts add up to 120000000 rows; allowed: at most 100000000" in err


def test_the_same_file_twice_in_a_mix_is_an_error_naming_both_entries(cli: Run, tmp_path: Path) -> None:
    root = new_project(tmp_path / "p")
    raw = "data/raw/instructions.jsonl"
    code, _, err = cli(
        "validate", None, str(root / "params.yaml"), f"data.source=[{raw}, {{path: ./{raw}, weight: 2}}]"
    )
    assert code == 2
    assert f"data.source[1]: './{raw}' is already data.source[0]" in err

    # the same file through a glob: found when prepare resolves the entries, before anything is written
    code, _, err = cli("prepare", root, f"data.source=[{raw}, {{path: 'data/raw/*.jsonl', weight: 2}}]")
    assert code == 2 and "Traceback" not in err
    assert "data.source[1]: 'data/raw/*.jsonl' names" in err and "which data.source[0]" in err
    assert not (root / "data/prepared").exists()


def test_weights_giving_too_many_rows_are_refused_before_copying(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft_framework.data import mixing

    monkeypatch.setattr(mixing, "MAX_MIXED_ROWS", 50)  # the real bound (1e8) would need 100,000 rows here
    root = new_project(tmp_path / "p")
    code, _, err = cli("prepare", root, "data.source=[{path: data/raw/instructions.jsonl, weight: 2}]")
    assert code == 2 and "Traceback" not in err
    assert err.startswith(
        "error: data.source: the weights and counts give 60 rows (data.source[0]: 30 kept x weight 2 = 60)"
    )
    assert not (root / "data/prepared").exists()


# ------------------------------------------------------------------ 10: packing with another max_seq_len
def test_train_refuses_data_prepared_with_a_longer_max_seq_len(cli: Run, project_copy: Path) -> None:
    adapter = project_copy / "models/adapter"
    before = sorted(p.name for p in adapter.iterdir())
    code, _, err = cli("train", project_copy, "train.packing=true", "data.max_seq_len=128")  # prepared at 256
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: data.max_seq_len: 128, but the data in 'data/prepared' was prepared with ")
    assert "data.max_seq_len 256" in err and "re-run prepare with data.max_seq_len=128" in err
    assert sorted(p.name for p in adapter.iterdir()) == before  # the previous adapter untouched


def test_packs_never_exceed_max_seq_len_even_without_a_recorded_length(cli: Run, project_copy: Path) -> None:
    """Data whose manifest records no length (written by hand or by an older version): the packs are checked."""
    manifest = project_copy / "data/prepared/manifest.json"
    saved = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in saved.items() if k != "format"}))
    code, _, err = cli("train", project_copy, "train.packing=true", "data.max_seq_len=64")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: data.max_seq_len: 64, but the prepared train split has a row of ")
    assert "re-run prepare with data.max_seq_len=64" in err


# ------------------------------------------------------------------------------------ 7: chat templates
#: a template that raises on real rows only (as Mistral's and Llama-2's do; here: a second user turn, which
#: the config-time sample lacks), loops on a row saying LOOP and writes 2 MB for a row saying FLOOD; it renders the config-time sample fine
HOSTILE_TEMPLATE = (
    "{% if messages | length > 3 %}"
    "{{ raise_exception('This template supports a single user turn: roles must alternate once') }}{% endif %}"
    "{% for m in messages %}"
    "{% if 'LOOP' in m['content'] %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}{% endif %}"
    "{% if 'FLOOD' in m['content'] %}{{ 'x' * 2000000 }}{% endif %}"
    "{{ m['role'] + ': ' + m['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": role, "content": content} for role, content in turns]})


def test_a_chat_template_failing_looping_or_flooding_on_rows_rejects_those_rows(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft_framework.data import render_bounds

    monkeypatch.setattr(render_bounds, "ROW_SECONDS", 2.0)  # 10 s by default
    root = new_project(tmp_path / "p")
    (root / "template.jinja").write_text(HOSTILE_TEMPLATE)
    good = [_chat(("user", f"Say {i}."), ("assistant", f"{i}")) for i in range(20)]
    bad = [
        _chat(("user", "Hi."), ("assistant", "Hello."), ("user", "Again?"), ("assistant", "Yes.")),  # line 21
        _chat(("user", "Please LOOP."), ("assistant", "no")),  # line 22
        _chat(("user", "Please FLOOD."), ("assistant", "no")),  # line 23
    ]
    (root / "data/raw/chat.jsonl").write_text("\n".join(good + bad) + "\n")
    code, out, err = cli(
        "prepare",
        root,
        "data.kind=chat",
        "data.source=data/raw/chat.jsonl",
        "data.chat_template=template.jinja",
    )
    assert code == 0 and "Traceback" not in err, err
    rejected = {
        row["line"]: row for row in map(json.loads, (root / "data/rejected.jsonl").read_text().splitlines())
    }
    assert sorted(rejected) == [21, 22, 23]
    assert rejected[21]["reasons"] == ["template_error"]
    assert "supports a single user turn: roles must alternate once" in rejected[21]["details"][0]
    assert rejected[21]["raw"]["messages"][2] == {"role": "user", "content": "Again?"}
    assert rejected[22]["reasons"] == ["template_timeout"] and "more than 2 s" in rejected[22]["details"][0]
    assert rejected[23]["reasons"] == ["template_too_long"]
    assert "rendered 2000" in rejected[23]["details"][0]
    assert len((root / "data/rejected.jsonl").read_text().splitlines()) == 3


# ------------------------------------------------------------------------------------------ 15: MLflow
@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:9", "foo://nowhere", "sqlite:///{root}/params.yaml/mlflow.db"],
    ids=["unreachable", "unknown-scheme", "unwritable"],
)
def test_an_unusable_mlflow_store_stops_train_before_it_starts(
    cli: Run, project_copy: Path, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    pytest.importorskip("mlflow")
    uri = uri.format(root=project_copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    adapter = project_copy / "models/adapter"
    before = {p.name: p.stat().st_mtime_ns for p in adapter.iterdir()}
    checkpoints = sorted(p.name for p in (project_copy / "models").rglob("checkpoint-*"))
    code, _, err = cli("train", project_copy, "train.report_to=mlflow", "train.max_steps=4")
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: MLFLOW_TRACKING_URI: {uri!r}: the MLflow tracking store cannot be used (")
    assert "train.report_to: none" in err
    assert {p.name: p.stat().st_mtime_ns for p in adapter.iterdir()} == before
    assert sorted(p.name for p in (project_copy / "models").rglob("checkpoint-*")) == checkpoints


def test_a_chat_template_looping_on_every_conversation_is_a_config_error(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft_framework.data import render_bounds

    monkeypatch.setattr(render_bounds, "ROW_SECONDS", 2.0)
    root = new_project(tmp_path / "p")
    (root / "template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    code, _, err = cli("prepare", root, "data.template=chat_template", "data.chat_template=template.jinja")
    assert code == 2 and "Traceback" not in err
    assert "data.chat_template: 'template.jinja': the template does not render a conversation" in err
    assert "took more than 2 s of CPU time" in err
