"""Format rows as prompt + response text and tokenize them with the base model's tokenizer.

Labels are -100 on prompt tokens when `data.train_on_responses_only` is set. The prompt/response boundary
is found on the tokenized *full* sequence (never by tokenizing the two halves apart, which changes tokens
at the seam for most BPE tokenizers): the tokenized prompt must be a prefix of it, or else character
offsets decide. With a fast tokenizer whose tokens of the full text have a boundary exactly at the prompt's
end (the common case) both rules cut there, and the prompt is not tokenized a second time. Chat data uses the tokenizer's own chat template: with `{% generation %}` markers the
template says which tokens are the assistant's; without them, each assistant turn's character span is
found by rendering the conversation up to that turn.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from peft_framework.config.schema import DataConfig
from peft_framework.data.render_bounds import check_rendered, row_time_limit, template_failure
from peft_framework.data.rows import Reason, RowProblem
from peft_framework.errors import DataError

IGNORE_INDEX = -100

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def resolve_template(cfg: DataConfig) -> str:
    """The template actually used: chat data always uses the chat template; text data uses none;
    instruction data uses `data.chat_template` when one is set and `data.template` is auto."""
    if cfg.kind in ("chat", "vision"):
        return "chat_template"
    if cfg.kind in (
        "preference",
        "unpaired_preference",
        "prompt",
    ):  # chat rows: the chat template; text: none
        return "chat_template" if cfg.chat_template else "none"
    if cfg.kind == "instruction":
        if cfg.template == "auto":  # a chat template named in the config is the one to use
            return "chat_template" if cfg.chat_template else "alpaca"
        return cfg.template
    return "none"


def format_instruction(instruction: str, input_text: str, template: str) -> str:
    """Prompt text for an instruction row ('alpaca' or 'plain'); the response follows it directly."""
    if template == "alpaca":
        if input_text:
            return ALPACA_PROMPT.format(instruction=instruction, input=input_text)
        return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)
    return f"{instruction}\n{input_text}\n" if input_text else f"{instruction}\n"


def instruction_messages(instruction: str, input_text: str, output: str) -> list[dict[str, str]]:
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | int  # causal LM: per token, -100 where masked; classification: class id
    n_tokens: int  # length before truncation
    truncated: bool
    text: dict[str, str]  # raw text columns: prompt/response or text/label_text
    prompt_tokens: int = 0  # tokens before the first trained one (causal LM)
    columns: dict[str, Any] | None = (
        None  # preference kinds: the row's own token columns (data/preference.py)
    )
    problem: RowProblem | None = None  # a reason to reject found while formatting the row


class Formatter:
    """Turns the canonical fields of a row into token ids and labels."""

    def __init__(self, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, label_names: Sequence[str] = ()):
        self.cfg = cfg
        self.tok = tokenizer
        self.template = resolve_template(cfg)
        self.label_ids = {name: i for i, name in enumerate(label_names)}
        self.eos_id = tokenizer.eos_token_id
        self.is_fast = bool(getattr(tokenizer, "is_fast", False))
        self._trailing_specials = _trailing_special_ids(tokenizer) if self.is_fast else []
        if cfg.kind != "classification" and cfg.add_eos and self.eos_id is None:
            raise DataError("data.add_eos: the tokenizer has no EOS token; set data.add_eos: false")
        self.generation_marks = False
        if self.template == "chat_template":
            chat_template = getattr(tokenizer, "chat_template", None)
            if not chat_template:
                raise DataError(
                    "data.template: the tokenizer has no chat template"
                    + ("; use data.template: alpaca or plain" if cfg.kind == "instruction" else "")
                    + " (chat data needs a tokenizer with a chat template)"
                )
            self.generation_marks = isinstance(chat_template, str) and bool(
                _GENERATION_TAG.search(chat_template)
            )

    @property
    def prompt_add_special_tokens(self) -> bool:
        """Whether `prompt` texts are tokenized with special tokens (chat prompts already contain them)."""
        return self.template != "chat_template"

    # ------------------------------------------------------------------------------------------ batch
    def encode_batch(self, rows: list[dict[str, Any]]) -> list[Encoded]:
        if self.cfg.kind in ("preference", "unpaired_preference"):
            from peft_framework.data.preference import encode_preference

            return encode_preference(self, rows)
        if self.cfg.kind == "prompt":
            from peft_framework.data.prompt import encode_prompt

            return encode_prompt(self, rows)
        if self.cfg.kind == "classification":
            return self._encode_classification(rows)
        if self.template == "chat_template":
            return [self._encode_chat_bounded(row) for row in rows]
        pairs = []
        for row in rows:
            if self.cfg.kind == "text":
                pairs.append(("", row["text"]))
            else:
                prompt = format_instruction(row["instruction"], row["input"], self.template)
                pairs.append((prompt, row["output"]))
        return self._encode_prompt_response(pairs)

    # ------------------------------------------------------------------------------ prompt + response
    def _encode_prompt_response(self, pairs: list[tuple[str, str]]) -> list[Encoded]:
        out: list[Encoded] = []
        for (prompt, response), (ids, boundary) in zip(pairs, self.tokenize_pairs(pairs)):
            out.append(self._finish_at(ids, boundary, {"prompt": prompt, "response": response}))
        return out

    def tokenize_pairs(
        self, pairs: list[tuple[str, str]], add_special_tokens: bool = True
    ) -> list[tuple[list[int], int]]:
        """(token ids of prompt + response, number of prompt tokens) per pair, untruncated, no EOS added."""
        if not pairs:
            return []
        fulls = [p + r for p, r in pairs]
        # ids only: attention masks, type ids and offsets cost a Python object per token to convert
        full_enc = self.tok(
            fulls,
            add_special_tokens=add_special_tokens,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        all_ids = full_enc["input_ids"]
        boundaries: list[int | None] = [None] * len(pairs)
        if self.is_fast:
            trailing = self._trailing_specials
            for i, (encoding, (prompt, _)) in enumerate(zip(full_enc.encodings, pairs)):
                cut = _clean_cut(encoding, len(prompt))
                # the prompt alone ends with these tokens: if the response starts with their text, the
                # prompt's own tokens are a longer prefix, and that rule decides
                if cut is not None and not (trailing and all_ids[i][cut : cut + len(trailing)] == trailing):
                    boundaries[i] = cut
        unsure = [i for i, b in enumerate(boundaries) if b is None]
        if unsure:  # no token boundary at the prompt's end (or a slow tokenizer): tokenize those prompts
            prompts = self.tok(
                [pairs[i][0] for i in unsure],
                add_special_tokens=add_special_tokens,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
            for i, prompt_ids in zip(unsure, prompts):
                ids = all_ids[i]
                if ids[: len(prompt_ids)] == prompt_ids:
                    boundaries[i] = len(prompt_ids)
                elif self.is_fast:
                    boundaries[i] = _boundary_from_offsets(full_enc.encodings[i].offsets, len(pairs[i][0]))
                else:  # slow tokenizer and the prompt's tokens change at the seam: tokenize the halves apart
                    ids = list(prompt_ids) + self.tok(pairs[i][1], add_special_tokens=False)["input_ids"]
                    all_ids[i] = ids
                    boundaries[i] = len(prompt_ids)
        return [(list(ids), int(b)) for ids, b in zip(all_ids, boundaries)]  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------- chat
    def _encode_chat_bounded(self, row: dict[str, Any]) -> Encoded:
        """`_encode_chat` within the bounds of `render_bounds`: a row the template fails on, takes too long
        for or floods comes back with `problem` set (and is rejected), instead of raising."""
        try:
            with row_time_limit():
                return self._encode_chat(row)
        except RowProblem as exc:
            return Encoded([], [], 0, False, {"prompt": "", "response": ""}, problem=exc)

    def _render(
        self, messages: list[dict[str, str]], row_chars: int, add_generation_prompt: bool = False
    ) -> str:
        """The template's text (tokenized afterwards by the caller): RowProblem when the template raises
        or renders more than `render_bounds.render_limit` characters."""
        try:
            text = self.tok.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # noqa: BLE001 - jinja errors and raise_exception() of the template
            raise template_failure(exc) from None
        return check_rendered(text, row_chars, self.cfg.max_seq_len)

    def _encode_chat(self, row: dict[str, Any]) -> Encoded:
        if self.cfg.kind in ("chat", "vision"):
            messages = row["messages"]
        else:
            messages = instruction_messages(row["instruction"], row["input"], row["output"])
        row_chars = sum(len(_content_text(m["content"])) for m in messages)
        render = functools.partial(self._render, row_chars=row_chars)
        prompt = render(messages[:-1], add_generation_prompt=True)
        text = {"prompt": prompt, "response": _content_text(messages[-1]["content"])}
        if self.cfg.kind == "vision":  # the processor re-tokenizes the whole text with its images, per batch
            text["text"] = render(messages)
        if not self.cfg.train_on_responses_only:  # every token is trained: no need to find the turns
            ids = list(self.tok(render(messages), add_special_tokens=False)["input_ids"])
            return self._finish(ids, [1] * len(ids), text)
        if self.generation_marks:
            render(messages)  # its length checked before transformers renders and tokenizes it in one call
            try:
                enc = self.tok.apply_chat_template(
                    messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
                )
            except Exception as exc:  # noqa: BLE001 - as in _render
                raise template_failure(exc) from None
            ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
            if any(mask):
                return self._finish(ids, mask, text)
        ids, mask = self._chat_by_spans(messages, render)
        return self._finish(ids, mask, text)

    def _chat_by_spans(
        self, messages: list[dict[str, str]], render: Callable[..., str]
    ) -> tuple[list[int], list[int]]:
        """Assistant turns found by rendering the conversation up to each turn (templates without markers)."""
        full = render(messages)
        spans: list[tuple[int, int]] = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = render(messages[:i], add_generation_prompt=True)
            upto = full if i == len(messages) - 1 else render(messages[: i + 1])
            if full.startswith(before) and full.startswith(upto) and len(upto) > len(before):
                spans.append((len(before), len(upto)))
            elif i == len(messages) - 1:
                raise DataError(
                    "data.template: the tokenizer's chat template does not render the prompt as a prefix of "
                    "the conversation, so the response tokens cannot be located; add {% generation %} "
                    "markers to the template or set data.train_on_responses_only: false"
                )
        if self.is_fast:
            enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ids = list(enc["input_ids"])
            mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
            return ids, mask
        ids, mask, pos = [], [], 0
        for a, b in spans + [(len(full), len(full))]:
            for piece, trained in ((full[pos:a], 0), (full[a:b], 1)):
                if piece:
                    piece_ids = self.tok(piece, add_special_tokens=False)["input_ids"]
                    ids += piece_ids
                    mask += [trained] * len(piece_ids)
            pos = b
        return ids, mask

    # ------------------------------------------------------------------------------------------ common
    def _finish(self, ids: list[int], mask: list[int], text: dict[str, str]) -> Encoded:
        """Append EOS, truncate, and build labels from the response mask."""
        if self.cfg.add_eos:
            first_response = mask.index(1) if 1 in mask else len(ids)
            if self.eos_id not in ids[first_response:]:
                ids = ids + [self.eos_id]
                mask = mask + [1]
        n_tokens = len(ids)
        max_len = self.cfg.max_seq_len
        truncated = n_tokens > max_len
        ids, mask = ids[:max_len], mask[:max_len]
        prompt_tokens = mask.index(1) if 1 in mask else n_tokens
        if self.cfg.train_on_responses_only:
            if mask.count(1) == len(mask) - prompt_tokens:  # one response span at the end: no loop needed
                labels = [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]
            else:
                labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        else:
            labels = list(ids)
        return Encoded(ids, labels, n_tokens, truncated, text, prompt_tokens)

    def _finish_at(self, ids: list[int], boundary: int, text: dict[str, str]) -> Encoded:
        """`_finish` for a mask of `boundary` prompt tokens and then only response tokens, without
        building the mask (the same result)."""
        if self.cfg.add_eos and self.eos_id not in ids[boundary:]:
            ids = ids + [self.eos_id]
        n_tokens = len(ids)
        max_len = self.cfg.max_seq_len
        truncated = n_tokens > max_len
        ids = ids[:max_len]
        prompt_tokens = boundary if boundary < len(ids) else n_tokens
        if self.cfg.train_on_responses_only:
            labels = [IGNORE_INDEX] * min(boundary, len(ids)) + ids[boundary:]
        else:
            labels = list(ids)
        return Encoded(ids, labels, n_tokens, truncated, text, prompt_tokens)

    def no_response_problem(self, enc: Encoded) -> RowProblem | None:
        """A causal-LM row with no label left to train on (after truncation) is useless; say why."""
        if enc.problem is not None:
            return enc.problem
        if self.cfg.kind in ("classification", "prompt") or enc.labels.count(IGNORE_INDEX) < len(enc.labels):
            return None
        return RowProblem(
            Reason.NO_RESPONSE_TOKENS,
            f"no response token left to train on: the prompt takes {enc.prompt_tokens} tokens, "
            f"data.max_seq_len is {self.cfg.max_seq_len}",
        )

    # -------------------------------------------------------------------------------- classification
    def _encode_classification(self, rows: list[dict[str, Any]]) -> list[Encoded]:
        if not rows:
            return []
        texts = [row["text"] for row in rows]
        max_len = self.cfg.max_seq_len
        full = self.tok(texts, add_special_tokens=True, verbose=False)["input_ids"]
        long_rows = [i for i, ids in enumerate(full) if len(ids) > max_len]
        cut = {}
        if long_rows:
            enc = self.tok([texts[i] for i in long_rows], truncation=True, max_length=max_len, verbose=False)
            cut = dict(zip(long_rows, enc["input_ids"]))
        out: list[Encoded] = []
        for i, row in enumerate(rows):
            ids = list(cut.get(i, full[i]))
            out.append(
                Encoded(
                    input_ids=ids,
                    labels=self.label_ids[row["label"]],
                    n_tokens=len(full[i]),
                    truncated=i in cut,
                    text={"text": row["text"], "label_text": row["label"]},
                )
            )
        return out


def _content_text(content: str | list[dict[str, str]]) -> str:
    """A message's text: the content itself, or its text parts joined (vision rows)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _boundary_from_offsets(offsets: Sequence[tuple[int, int]], prompt_chars: int) -> int:
    """Number of leading tokens that lie wholly inside the prompt (leading special tokens count as prompt)."""
    boundary = 0
    seen_text = False
    for start, end in offsets:
        if start == end:  # a special token added by the tokenizer
            if seen_text:
                break
        elif end <= prompt_chars:
            seen_text = True
        else:
            break
        boundary += 1
    return boundary


def _clean_cut(encoding, prompt_chars: int) -> int | None:
    """The number of prompt tokens when the full text's tokens have a boundary exactly at the prompt's end,
    else None (then the prompt is tokenized on its own, see the module docstring).

    At such a boundary both rules agree: the prompt's own tokens, if they are a prefix of the full text's,
    are exactly the tokens before it, and otherwise the offsets cut there. Tokenizers rarely merge across
    the "\n" every template's prompt ends with, so this is the common case; it saves tokenizing every
    prompt a second time."""
    first = encoding.char_to_token(prompt_chars)
    if first is None or encoding.token_to_chars(first)[0] != prompt_chars:
        return None  # empty response, or a token that straddles the seam
    if first > 0:
        before = encoding.token_to_chars(first - 1)
        if before is not None and before[1] > prompt_chars:
            return None
    return first


def _trailing_special_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer appends after a text (e.g. an EOS), from one probe."""
    enc = tokenizer("a", add_special_tokens=True, return_attention_mask=False, return_token_type_ids=False)
    encoding = enc.encodings[0]
    trailing: list[int] = []
    for token_id, sequence in zip(reversed(encoding.ids), reversed(encoding.sequence_ids)):
        if sequence is not None:
            break
        trailing.append(token_id)
    return trailing[::-1]
