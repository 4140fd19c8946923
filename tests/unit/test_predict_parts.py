"""The parts of `peft-framework predict` (issue 28): the head check shared with `generate`, input rows and
their formatting, the plan's variants, batched classification against one-text forwards, output rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.tiny_models import tiny_bert, tiny_llama
from transformers import BertConfig, BertModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from peft_framework.config.schema import DataConfig, ModelConfig
from peft_framework.errors import UserError
from peft_framework.models.heads import check_head, head_kind
from peft_framework.predict import Plan, Row, _batches, combine, model_inputs, read_rows


def _saved(tmp_path: Path, model: torch.nn.Module, name: str) -> str:
    """A model directory's config.json (the check reads only that), as save_pretrained writes it."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


# ----------------------------------------------------------------------------------------- head check
def test_a_classifier_is_refused_as_a_causal_lm_naming_its_architecture(tmp_path: Path) -> None:
    classifier = _saved(tmp_path, tiny_bert(), "merged")
    with pytest.raises(UserError) as info:
        check_head(ModelConfig(name_or_path=classifier), what="generate", key="--base")
    message = str(info.value)
    assert message.startswith(f"--base: {classifier!r} is a BertForSequenceClassification")
    assert "generate needs a causal language model" in message
    assert f"use `peft-framework predict {classifier}`" in message
    check_head(ModelConfig(name_or_path=classifier, task="sequence_classification"), what="predict")


def test_a_bare_encoder_has_no_lm_head_and_no_trained_classifier(tmp_path: Path) -> None:
    encoder = _saved(tmp_path, BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32)), "enc")  # fmt: skip
    with pytest.raises(UserError, match="is a BertModel, which has no head for model.task 'causal_lm'"):
        check_head(ModelConfig(name_or_path=encoder), what="generate")
    as_classifier = ModelConfig(name_or_path=encoder, task="sequence_classification")
    with pytest.raises(UserError, match="new and random: .*adapter.modules_to_save"):
        check_head(as_classifier, what="predict")
    check_head(as_classifier, what="predict", head_from_adapter=True)  # the adapter saves the head


def test_causal_lms_pass_and_builtins_are_not_read(tmp_path: Path) -> None:
    check_head(ModelConfig(name_or_path=_saved(tmp_path, tiny_llama(), "llama")), what="generate")
    check_head(ModelConfig(name_or_path="builtin:tiny-llama"), what="generate")
    assert (
        head_kind(["GPT2LMHeadModel"]) == "causal_lm"
        and "GPT2LMHeadModel" in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    )
    assert head_kind(["BertForSequenceClassification"]) == "sequence_classification"
    assert head_kind(["BertModel"]) is None


# ---------------------------------------------------------------------------------------------- inputs
def test_read_rows_keeps_line_numbers_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b", "id": 7}\n')
    rows, numbers = read_rows(path)
    assert rows == [{"text": "a"}, {"text": "b", "id": 7}] and numbers == [1, 3]
    path.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"line 2: got list; allowed: a JSON object"):
        read_rows(path)
    path.write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(UserError, match=r"line 2 is not JSON"):
        read_rows(path)
    with pytest.raises(UserError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")


def test_prompts_are_formatted_with_the_training_template() -> None:
    alpaca = DataConfig(kind="instruction")
    rows = [{"text": "Say hi."}, {"instruction": "Add.", "input": "1 2"}, {"prompt": "raw <s>"}]
    texts = [r.text for r in model_inputs(rows, "causal_lm", alpaca, str)]
    assert texts[0].startswith("Below is an instruction") and texts[0].endswith("### Response:\n")
    assert "### Input:\n1 2" in texts[1]
    assert texts[2] == "raw <s>"  # a `prompt` is the model input as given
    chat = model_inputs(rows[:1], "causal_lm", DataConfig(kind="chat"), str)
    assert chat[0].chat is True and chat[0].text == "Say hi."
    plain = model_inputs(rows[:1], "causal_lm", None, str)  # no training config known: as given
    assert plain[0].text == "Say hi." and not plain[0].chat


def test_a_row_without_text_is_an_error_naming_it() -> None:
    with pytest.raises(UserError, match=r"^row 2: no text; allowed: a string field 'text'$"):
        model_inputs(
            [{"text": "ok"}, {"review": "x"}], "sequence_classification", None, lambda i: f"row {i + 1}"
        )
    with pytest.raises(UserError, match=r"'prompt' or 'text' or 'instruction' \(plus an optional 'input'\)"):
        model_inputs([{"text": 3}], "causal_lm", None, str)


# ------------------------------------------------------------------------------------------------ plan
def test_variants_say_why_one_is_missing() -> None:
    plan = Plan(task="causal_lm", notes={"merged": "export.output_dir: models/merged is an unmerged export"})
    assert plan.variants(None) == ["adapter"] and plan.variants("adapter") == ["adapter"]
    with pytest.raises(
        UserError, match=r"^--use both: export.output_dir: models/merged is an unmerged export$"
    ):
        plan.variants("both")
    only_model = Plan(task="causal_lm", notes={"adapter": "give --adapter DIR"})
    assert only_model.variants(None) == ["merged"]


def test_batches_group_by_length_and_cover_every_row_once() -> None:
    rows = [Row({}, "x" * n) for n in (3, 10, 1, 7, 5)]
    batches = list(_batches(rows, 2))
    assert batches == [[1, 3], [4, 0], [2]]


def test_output_rows_keep_the_input_and_compare_variants() -> None:
    rows = [Row({"id": 1, "text": "a"}, "a"), Row({"id": 2, "text": "b"}, "b")]
    one = combine(rows, {"adapter": [{"label": "pos"}, {"label": "neg"}]})
    assert one == [{"id": 1, "text": "a", "label": "pos"}, {"id": 2, "text": "b", "label": "neg"}]
    both = combine(
        rows,
        {"adapter": [{"label": "pos"}, {"label": "neg"}], "merged": [{"label": "pos"}, {"label": "pos"}]},
    )
    assert [r["agree"] for r in both] == [True, False] and both[1]["merged"] == {"label": "pos"}


# ------------------------------------------------------------------------------------- classification
def test_batched_classification_matches_one_text_at_a_time() -> None:
    """Right-padded batches give each text the probabilities its own unpadded forward gives (the oracle:
    transformers' LlamaForSequenceClassification pools the last non-pad token)."""
    from peft_framework.inference import MultiAdapterModel

    torch.manual_seed(0)
    model = MultiAdapterModel.from_base(
        ModelConfig(name_or_path="builtin:tiny-llama", task="sequence_classification"),
        label_names=["a", "b", "c"],
        device="cpu",
    )
    assert model.label_names == ["a", "b", "c"]
    texts = ["short", "a much longer text than the others", "mid length"]
    batched = torch.tensor(model.classify(texts, batch_size=3))
    with torch.no_grad():
        single = torch.cat(
            [model.model(**model.tokenizer(t, return_tensors="pt")).logits.softmax(-1) for t in texts]
        )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    assert model.classify(texts, batch_size=3, max_length=4)  # truncation to the training length works
