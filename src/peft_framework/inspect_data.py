"""`peft-framework inspect-data`: what the model will train on, row by row.

For prepared rows: the formatted text as tokenized, with the tokens that carry a loss (labels != -100)
marked: ANSI colour on a terminal, ⟦ ⟧ around them when piped (or with NO_COLOR set); per row the token
counts (total / trained). Then the rows the filters rejected, each with its reasons and where it came
from (`data.rejected_path`). Not part of any stage (so editing it re-runs nothing).
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from peft_framework.config.schema import Config
from peft_framework.data.formatting import IGNORE_INDEX
from peft_framework.errors import DataError, UserError
from peft_framework.paths import resolve

PLAIN = ("⟦", "⟧")
ANSI = ("\033[1;32m", "\033[0m")  # trained tokens: bold green
ANSI_DIM = ("\033[2m", "\033[0m")  # headers
_PREVIEW = 300


def escaped(text: str, keep: str = "") -> str:
    """`text` safe to print: control characters (an ESC that starts an OSC/CSI sequence could retitle or
    clear the terminal) and lone surrogates (not encodable as UTF-8) written as escapes (`\\x1b`,
    `\\ud83d`); the characters in `keep` (a row's newlines and tabs) stay as they are."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii")
        if c not in keep and unicodedata.category(c) in ("Cc", "Cs")
        else c
        for c in text
    )


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def trained_spans(input_ids: list[int], labels: list[int]) -> Iterator[tuple[bool, list[int]]]:
    """Runs of consecutive tokens with the same trained flag (label != -100), in order."""
    run: list[int] = []
    flag = None
    for tok, label in zip(input_ids, labels):
        trained = label != IGNORE_INDEX
        if flag is not None and trained != flag:
            yield flag, run
            run = []
        flag = trained
        run.append(tok)
    if run:
        yield bool(flag), run


def marked_text(tokenizer: Any, input_ids: list[int], labels: list[int], colour: bool) -> str:
    """The row's text with its trained tokens marked (special tokens shown as written)."""
    start, end = ANSI if colour else PLAIN
    parts = []
    for trained, ids in trained_spans(input_ids, labels):
        text = escaped(
            tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), "\n\t"
        )
        parts.append(f"{start}{text}{end}" if trained else text)
    return "".join(parts)


def _prepared(config: Config, root: Path) -> tuple[Path, Any, dict[str, Any]]:
    from peft_framework.provenance import read_manifest

    data_dir = resolve(root, config.data.output_dir)
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(
            f"data.output_dir: {config.data.output_dir!r} holds no prepared data ({data_dir.resolve()}); "
            "run `peft-framework prepare CONFIG` first"
        )
    import datasets

    return data_dir, datasets.load_from_disk(str(data_dir)), read_manifest(data_dir)


def rejected_rows(path: Path, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(number of rejected rows, the first `limit` of them) from `data.rejected_path`."""
    if not path.is_file():
        return 0, []
    count, shown = 0, []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            count += 1
            if len(shown) < limit:
                try:
                    shown.append(json.loads(line))
                except json.JSONDecodeError:
                    shown.append({"reasons": ["unreadable line"], "raw": line[:_PREVIEW]})
    return count, shown


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = escaped(" ".join(text.split()))
    return text if len(text) <= _PREVIEW else text[: _PREVIEW - 3] + "..."


def inspect_data(
    config: Config,
    root: str | os.PathLike[str] = ".",
    rows: int = 5,
    split: str = "train",
    out: TextIO | None = None,
    colour: bool | None = None,
) -> dict[str, Any]:
    """Print `rows` prepared rows of `split` and up to `rows` rejected rows to `out`; returns the counts."""
    from peft_framework.models.loading import load_tokenizer

    out = out or sys.stdout
    colour = use_colour(out) if colour is None else colour
    dim = ANSI_DIM if colour else ("", "")
    root = Path(root)
    _, dataset, manifest = _prepared(config, root)
    if split not in dataset:
        raise UserError(f"--split: {split!r} is not in the prepared data; allowed: {', '.join(dataset)}")
    data = dataset[split]
    tokenizer = load_tokenizer(config.model)
    fmt = manifest.get("format") or {}
    template = fmt.get("template")
    if fmt.get("chat_template_setting"):
        template = f"{template} ({fmt['chat_template_setting']})"
    start, end = ANSI if colour else PLAIN
    print(
        f"{dim[0]}{config.data.output_dir} · split {split}: {len(data)} rows, showing {min(rows, len(data))} · "
        f"template {template} · trained tokens marked {start}like this{end}{dim[1]}",
        file=out,
    )
    classification = manifest.get("task") == "sequence_classification"
    label_names = manifest.get("label_names") or []
    totals = {"rows": 0, "tokens": 0, "trained": 0}
    for i, row in enumerate(data.select(range(min(rows, len(data))))):
        if "chosen_input_ids" in row:  # preference pairs: the two answers one under the other
            source = row.get("source") or ""
            print(f"\n{dim[0]}── row {i} {source} · pair{dim[1]}", file=out)
            for side in ("chosen", "rejected"):
                ids, labels = list(row[f"{side}_input_ids"]), list(row[f"{side}_labels"])
                trained = sum(label != IGNORE_INDEX for label in labels)
                print(f"{dim[0]}  {side}: tokens {len(ids)} total, {trained} trained{dim[1]}", file=out)
                print(marked_text(tokenizer, ids, labels, colour), file=out)
                totals["tokens"] += len(ids)
                totals["trained"] += trained
            totals["rows"] += 1
            continue
        if "prompt_ids" in row:  # data.kind prompt: the prompt as tokenized, and the columns rewards read
            ids = list(row["prompt_ids"])
            extra = {k: v for k, v in row.items() if k not in ("prompt_ids", "prompt", "source")}
            source = escaped(str(row.get("source") or ""))
            print(f"\n{dim[0]}── row {i} {source} · prompt tokens: {len(ids)}{dim[1]}", file=out)
            text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            print(escaped(text, "\n\t"), file=out)
            print(f"{dim[0]}   columns: {escaped(json.dumps(extra, ensure_ascii=False))}{dim[1]}", file=out)
            totals["rows"] += 1
            totals["tokens"] += len(ids)
            continue
        ids = list(row["input_ids"])
        if classification:
            label = row["labels"]
            name = label_names[label] if 0 <= label < len(label_names) else label
            trained = 0
            head = f"tokens: {len(ids)} · label: {name}"
            body = escaped(
                tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), "\n\t"
            )
        else:
            labels = list(row["labels"])
            trained = sum(label != IGNORE_INDEX for label in labels)
            head = f"tokens: {len(ids)} total, {trained} trained"
            if "label" in row:  # unpaired preference rows
                head += f" · label: {'desirable' if row['label'] else 'undesirable'}"
            body = marked_text(tokenizer, ids, labels, colour)
        source = escaped(str(row.get("source") or ""))
        print(f"\n{dim[0]}── row {i} {source} · {head}{dim[1]}", file=out)
        print(body, file=out)
        for k, image in enumerate(row.get("images") or []):  # data.kind vision: each placeholder's image
            print(
                f"{dim[0]}   image {k}: {image['width']}x{image['height']} · {len(image['bytes'])} bytes · "
                f"sha256 {image['sha256'][:16]}{dim[1]}",
                file=out,
            )
        totals["rows"] += 1
        totals["tokens"] += len(ids)
        totals["trained"] += trained
    rejected_path = resolve(root, config.data.rejected_path)
    n_rejected, shown = rejected_rows(rejected_path, rows)
    print(
        f"\n{dim[0]}── rejected: {n_rejected} rows in {config.data.rejected_path}"
        + (f", showing {len(shown)}" if shown else "")
        + dim[1],
        file=out,
    )
    for rej in shown:
        where = rej.get("source") or "?"
        if rej.get("line") is not None:
            where += f":{rej['line']}"
        elif rej.get("row") is not None:
            where += f"#{rej['row']}"
        reasons = ", ".join(rej.get("reasons") or [])
        details = "; ".join(d for d in rej.get("details") or [] if d)
        print(escaped(f"{where}: {reasons}" + (f" ({details})" if details else "")), file=out)
        print(f"    {_preview(rej.get('raw'))}", file=out)
    return {**totals, "rejected": n_rejected, "split": split}
