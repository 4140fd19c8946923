"""Forward passes shared by the base and the adapter evaluation (the same code scores both).

- `lm_nll`: per example, the summed next-token NLL over the labelled (response) tokens and their count.
- `classify`: per example, the predicted class id and the cross-entropy loss.
- `generate`: greedy continuations of prompts, cut at the first EOS.

Image prompts (evaluation/vision.py) build their batches with the processor and share the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

IGNORE_INDEX = -100


def batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        if not len(seq):
            continue
        if side == "right":
            out[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        else:
            out[i, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def attention_mask(seqs: Sequence[Sequence[int]], side: str = "right") -> torch.Tensor:
    return pad([[1] * len(s) for s in seqs], 0, side)


@dataclass
class TokenScores:
    nll: float  # summed over the example's scored tokens (nats)
    num_tokens: int


@torch.no_grad()
def lm_nll(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> list[TokenScores]:
    """Causal-LM NLL of every labelled token (label != -100), predicted from the tokens before it."""
    out: list[TokenScores] = []
    for idx in batches(len(input_ids), batch_size):
        ids = pad([input_ids[i] for i in idx], pad_token_id).to(device)
        mask = attention_mask([input_ids[i] for i in idx]).to(device)
        lab = pad([labels[i] for i in idx], IGNORE_INDEX).to(device)
        out.extend(row_nll(model(input_ids=ids, attention_mask=mask).logits, lab))
    return out


def row_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[TokenScores]:
    """Per row of a batch, the summed NLL of each labelled token predicted from the tokens before it."""
    target = labels[:, 1:]
    out = []
    for row in range(labels.shape[0]):  # one row at a time: fp32 logits of a whole batch can be large
        nll = F.cross_entropy(
            logits[row, :-1].float(), target[row], ignore_index=IGNORE_INDEX, reduction="sum"
        )
        out.append(TokenScores(float(nll), int((target[row] != IGNORE_INDEX).sum())))
    return out


@dataclass
class ClassScores:
    predicted: int
    loss: float


@torch.no_grad()
def classify(
    model: nn.Module,
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[int],
    *,
    pad_token_id: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> list[ClassScores]:
    """Predicted class (argmax) and cross-entropy per example; inputs right-padded with `pad_token_id`
    (sequence-classification heads of decoder models pool the last non-pad token)."""
    out: list[ClassScores] = []
    for idx in batches(len(input_ids), batch_size):
        ids = pad([input_ids[i] for i in idx], pad_token_id).to(device)
        mask = attention_mask([input_ids[i] for i in idx]).to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        target = torch.as_tensor([labels[i] for i in idx], device=logits.device)
        losses = F.cross_entropy(logits, target, reduction="none")
        for pred, loss in zip(logits.argmax(-1).tolist(), losses.tolist()):
            out.append(ClassScores(int(pred), float(loss)))
    return out


def clean_text(text: str, eos_token: str | None) -> str:
    """The normalisation applied to generated texts and references alike: cut at EOS, strip whitespace."""
    if eos_token:
        text = text.split(eos_token, 1)[0]
    return text.strip()


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    add_special_tokens: bool = True,
    max_prompt_tokens: int | None = None,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), decoded without special tokens and
    cut at the first EOS. Only plain greedy decoding: the model's own generation_config (sampling,
    repetition penalties) is ignored so that base and adapter are decoded identically."""
    gen_config = greedy_config(tokenizer, max_new_tokens)
    pad_id = gen_config.pad_token_id
    texts: list[str] = []
    for idx in batches(len(prompts), batch_size):
        encoded = [
            tokenizer(prompts[i], add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
            for i in idx
        ]
        if max_prompt_tokens is not None:  # keep the end of the prompt: that is where the answer starts
            encoded = [ids[-max_prompt_tokens:] for ids in encoded]
        ids = pad(encoded, pad_id, side="left").to(device)
        mask = attention_mask(encoded, side="left").to(device)
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
        texts.extend(decode_new(tokenizer, output[:, ids.shape[1] :]))
    return texts


def greedy_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> GenerationConfig:
    """Plain greedy decoding, the same for base and adapter (the model's own generation_config ignored)."""
    eos_id = tokenizer.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def decode_new(tokenizer: PreTrainedTokenizerBase, new_tokens: torch.Tensor) -> list[str]:
    """Generated rows decoded without special tokens, cut at the first EOS, stripped (`clean_text`)."""
    eos_id = tokenizer.eos_token_id
    texts = []
    for row in new_tokens.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        texts.append(clean_text(tokenizer.decode(row, skip_special_tokens=True), tokenizer.eos_token))
    return texts
