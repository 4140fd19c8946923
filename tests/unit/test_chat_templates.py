"""data.chat_template: shipped templates, custom files, the missing-token error, and content hashes of the
tokenizer (local directory, HuggingFace cache snapshot, built in code)."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import ValidationError

from peft_framework.config.data_schema import CHAT_TEMPLATES
from peft_framework.config.schema import DataConfig, ModelConfig
from peft_framework.data.formatting import IGNORE_INDEX, Formatter, resolve_template
from peft_framework.errors import ConfigError, DataError
from peft_framework.inspect_data import PLAIN, marked_text, trained_spans
from peft_framework.models.chat_template import (
    apply_data_chat_template,
    apply_prepared_chat_template,
    required_tokens,
    resolve_chat_template,
    shipped_template_path,
    template_sha256,
)
from peft_framework.models.tiny import tiny_tokenizer
from peft_framework.models.tokenizer_identity import tokenizer_identity

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And Italy?"},
    {"role": "assistant", "content": "Rome"},
]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def tokenizer_with_specials():
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": SPECIALS})
    return tok


@pytest.mark.parametrize("name", CHAT_TEMPLATES)
def test_shipped_templates_train_exactly_the_assistant_turns(name):
    assert shipped_template_path(name).is_file()
    dc = DataConfig(kind="chat", chat_template=name)
    tok = tokenizer_with_specials()
    apply_data_chat_template(tok, dc)
    assert tok.chat_template == shipped_template_path(name).read_text()
    (enc,) = Formatter(dc, tok).encode_batch([{"messages": CONV}])
    trained = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX])
    end = {"chatml": "<|im_end|>", "llama-3": "<|eot_id|>"}.get(name, "</s>")
    eos = (
        "" if end == "</s>" else "</s>"
    )  # data.add_eos appends the tokenizer's EOS unless a turn ends with it
    # both answers and their end-of-turn marker, nothing of the prompt
    assert trained.replace(" ", "") == f"Paris{end}Rome{end}{eos}".replace(" ", "")
    prompt = tok.apply_chat_template(CONV[:-1], tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(CONV, tokenize=False).startswith(prompt)
    assert "Be brief." in prompt  # the system message is kept


def test_a_template_whose_tokens_the_tokenizer_lacks_is_a_clear_error():
    dc = DataConfig(kind="chat", chat_template="chatml")
    with pytest.raises(ConfigError) as err:
        apply_data_chat_template(tiny_tokenizer(), dc)
    message = str(err.value)
    assert "data.chat_template: 'chatml'" in message and "<|im_start|>, <|im_end|>" in message
    assert required_tokens(shipped_template_path("llama-3").read_text()) == [
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    assert required_tokens(shipped_template_path("mistral").read_text()) == []  # bos/eos by variable


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"chat_template": "chatml2"}, "'chatml2' is not a shipped template or a .jinja file; allowed: null"),
        ({"kind": "text", "chat_template": "chatml"}, "data.kind 'text' uses no chat template"),
        (
            {"template": "alpaca", "chat_template": "alpaca"},
            "data.template is 'alpaca', which does not use it",
        ),
    ],
)
def test_config_errors_name_the_key_value_and_what_is_allowed(data, says):
    with pytest.raises(ValidationError, match="data.chat_template") as err:
        DataConfig(**data)
    assert says in str(err.value)


def test_auto_template_follows_a_configured_chat_template():
    assert resolve_template(DataConfig()) == "alpaca"
    assert resolve_template(DataConfig(chat_template="alpaca")) == "chat_template"
    assert resolve_template(DataConfig(chat_template="x.jinja", template="chat_template")) == "chat_template"


def test_custom_template_file_relative_to_the_root(tmp_path):
    (tmp_path / "tpl").mkdir()
    text = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "tpl" / "mine.jinja").write_text(text)
    dc = DataConfig(kind="chat", chat_template="tpl/mine.jinja")
    assert resolve_chat_template(dc, tmp_path) == text
    with pytest.raises(ConfigError, match=r"data.chat_template: 'tpl/mine.jinja': no such file"):
        resolve_chat_template(dc, tmp_path / "elsewhere")
    (tmp_path / "tpl" / "mine.jinja").write_text("{% for m in messages %}{{ m['role'] }")  # syntax error
    with pytest.raises(ConfigError, match="does not render a conversation"):
        apply_data_chat_template(tiny_tokenizer(), dc, tmp_path)


def test_training_refuses_data_prepared_with_another_template(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(shipped_template_path("alpaca").read_text())
    dc = DataConfig(chat_template="mine.jinja")
    text = path.read_text()
    manifest = {"format": {"chat_template": text, "chat_template_sha256": template_sha256(text)}}
    tok = tiny_tokenizer()
    apply_prepared_chat_template(tok, dc, manifest, tmp_path)
    assert tok.chat_template == text  # what the adapter's tokenizer will carry
    path.write_text(text.replace("### Response", "### Answer"))
    with pytest.raises(DataError, match="run `peft-framework prepare` again"):
        apply_prepared_chat_template(tiny_tokenizer(), dc, manifest, tmp_path)


def test_tokenizer_identity_hashes_the_files_of_a_local_directory(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "model")
    model = ModelConfig(name_or_path="model")
    first = tokenizer_identity(model, tok, tmp_path)
    assert first["source"] == "local" and first["commit"] is None
    assert "tokenizer.json" in first["files"] and "tokenizer_config.json" in first["files"]
    config = json.loads((tmp_path / "model" / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77  # same name, different tokenizer
    (tmp_path / "model" / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_identity(model, tok, tmp_path)["sha256"] != first["sha256"]
    builtin = tokenizer_identity(ModelConfig(), tok, tmp_path)
    assert builtin["source"] == "code" and list(builtin["files"]) == ["<in memory>"]


def test_a_hub_branch_resolves_to_the_cached_snapshot_commit(tmp_path):
    """Offline, `org/name` at branch main is the snapshot refs/main points at in the HuggingFace cache."""
    tok = tiny_tokenizer()
    repo = tmp_path / "hub" / "models--org--tiny"
    commits = ["a" * 40, "b" * 40]
    for commit in commits:
        tok.save_pretrained(repo / "snapshots" / commit)
    (repo / "snapshots" / commits[1] / "tokenizer.json").write_text("{}")  # a later, different tokenizer
    (repo / "refs").mkdir()
    ids = {}
    for commit in commits:
        (repo / "refs" / "main").write_text(commit)
        ids[commit] = tokenizer_identity(
            ModelConfig(name_or_path="org/tiny"), tok, tmp_path, cache_dir=tmp_path / "hub"
        )
        assert ids[commit]["source"] == "hub" and ids[commit]["commit"] == commit
    assert ids[commits[0]]["sha256"] != ids[commits[1]]["sha256"]
    pinned = ModelConfig(name_or_path="org/tiny", revision=commits[0])
    assert tokenizer_identity(pinned, tok, tmp_path, cache_dir=tmp_path / "hub")["commit"] == commits[0]
    missing = tokenizer_identity(
        ModelConfig(name_or_path="org/absent"), tok, tmp_path, cache_dir=tmp_path / "hub"
    )
    assert missing["source"] == "code" and missing["commit"] is None


def test_trained_tokens_are_marked_plain_or_in_colour():
    tok = tiny_tokenizer()
    ids = tok("Q: hi\nA: yo", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    labels = [IGNORE_INDEX] * 9 + ids[9:]
    assert [flag for flag, _ in trained_spans(ids, labels)] == [False, True]
    assert marked_text(tok, ids, labels, colour=False) == f"Q: hi\nA: {PLAIN[0]}yo</s>{PLAIN[1]}"
    coloured = marked_text(tok, ids, labels, colour=True)
    assert "\033[" in coloured and PLAIN[0] not in coloured
    assert not io.StringIO().isatty()  # what the CLI checks before colouring


def test_the_prepare_cache_key_follows_the_template_file_content(tmp_path):
    """The Prefect cache key of prepare hashes a custom template file's content, not only its path."""
    from tasks.cache import key_material
    from tasks.stages import STAGES

    from peft_framework.config.schema import Config

    (tmp_path / "mine.jinja").write_text("{{ messages[0]['content'] }}")
    config = Config(data=DataConfig(chat_template="mine.jinja"))
    before = key_material(STAGES["prepare"], config, tmp_path)
    assert "mine.jinja" in before["inputs"]
    (tmp_path / "mine.jinja").write_text("{{ messages[-1]['content'] }}")
    assert key_material(STAGES["prepare"], config, tmp_path)["inputs"] != before["inputs"]
    assert (
        key_material(STAGES["prepare"], Config(data=DataConfig(chat_template="chatml")), tmp_path)["config"]
        != key_material(STAGES["prepare"], Config(), tmp_path)["config"]
    )
