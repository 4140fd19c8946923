"""training/generation.py: left padding changes nothing, sampling is seeded, the mask stops after the first
EOS (kept), as TRL's GRPOTrainer masks it."""

from __future__ import annotations

import pytest
import torch

from peft_framework.models.tiny import tiny_llama, tiny_tokenizer
from peft_framework.training.generation import TokenIds, generate_completions, mask_after_eos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_llama(), tiny_tokenizer()


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(t) for t in ("hello there", "a", "repeat the word cat")]


def test_mask_keeps_the_first_eos_and_masks_after_it() -> None:
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    mask, truncated = mask_after_eos(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_left_padding_gives_what_each_prompt_gives_alone(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)
    kwargs = dict(max_new_tokens=6, do_sample=False, num_return_sequences=1, seed=0)
    together = generate_completions(model, tokenizer, prompts, **kwargs)
    for i, prompt in enumerate(prompts):
        alone = generate_completions(model, tokenizer, [prompt], **kwargs)
        assert together.ids()[i] == alone.ids()[0]
        assert together.texts[i] == alone.texts[0]


def test_sampling_is_seeded_and_grouped_per_prompt(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)
    kwargs = dict(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=4)
    torch.manual_seed(123)
    a = generate_completions(model, tokenizer, prompts, seed=7, **kwargs)
    torch.rand(10)  # the global RNG moved on: the seed alone decides
    b = generate_completions(model, tokenizer, prompts, seed=7, **kwargs)
    c = generate_completions(model, tokenizer, prompts, seed=8, **kwargs)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert a.prompt_index == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    assert a.completion_ids.shape[0] == 12 and a.completion_ids.shape[1] <= 8
    assert model.training is False


def test_eos_ends_the_completion_and_later_tokens_are_pad(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = _prompts(tokenizer)
    # pretend the most frequent sampled token is an EOS: every row stops at its first occurrence
    sampled = generate_completions(
        model, tokenizer, prompts, max_new_tokens=8, num_return_sequences=2, seed=1
    )
    eos = int(torch.mode(sampled.completion_ids[sampled.completion_mask.bool()]).values)
    ids = TokenIds(pad_token_id=tokenizer.pad_token_id, eos_token_ids=(eos,))
    out = generate_completions(model, ids, prompts, max_new_tokens=8, num_return_sequences=2, seed=1)
    assert out.texts is None
    for row, mask, cut in zip(out.completion_ids, out.completion_mask, out.truncated):
        kept = row[mask.bool()].tolist()
        if not cut:
            assert kept[-1] == eos and eos not in kept[:-1]
        assert (row[~mask.bool()] == tokenizer.pad_token_id).all()
    assert out.lengths.tolist() == [len(r) for r in out.ids()]


def test_training_mode_is_put_back(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    model.train()
    try:
        generate_completions(model, tokenizer, _prompts(tokenizer)[:1], max_new_tokens=2, seed=0)
        assert model.training
    finally:
        model.eval()
