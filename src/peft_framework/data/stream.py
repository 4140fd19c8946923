"""The row pipeline at scale: the same rules as `pipeline.process`, in bounded memory.

Rows stream through three passes over Arrow files in a work directory; what stays in RAM is counters,
and numpy arrays of digests while the duplicates are found (`dedup`: ~50 bytes per row for a moment):

1. screen (one process, input order): parse, fields, cleaning, labels, length in characters. Candidates
   go to an Arrow file; rejected rows to a spool file as they come.
2. encode (`datasets.map`, batched, `data.num_proc` processes): format, tokenize, token checks, digests
   and split of every candidate.
3. decide (one process, input order): the duplicates of rows kept before them (found at once from the
   digests, `dedup.duplicates`, the same rows as checking each against the rows kept so far); the row
   numbers of each split to files in the work directory (`split_rows`), counts, and the rejected rows of
   this pass to a second spool.

The two spools are merged by input position into `rejected.jsonl`, so it lists rows in input order as
before; the splits are selected from pass 2's Arrow file by the row-number files, loading neither.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

from peft_framework.config.schema import DataConfig
from peft_framework.data import prompt
from peft_framework.data.dedup import duplicates
from peft_framework.data.formatting import Formatter
from peft_framework.data.pipeline import (
    SPLITS,
    allowed_label_set,
    duplicate_detail,
    label_names_for,
    row_keys,
    screen,
    token_problem,
)
from peft_framework.data.preference import PREFERENCE_KINDS
from peft_framework.data.preference import output_features as preference_features
from peft_framework.data.rows import Reason, Record, Rejected
from peft_framework.data.split_rows import SplitRows

BATCH = 1000
# Characters that some readers (str.splitlines, JavaScript) take as line breaks: written escaped, so one
# rejected row is always one line. They can only occur inside JSON strings, where the escape is equivalent.
_LINE_BREAK_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


#: a rejected row larger than this (as JSON) is kept as a prefix + its length and sha256 in rejected.jsonl
MAX_REJECTED_ROW_CHARS = 64 * 1024
_REJECTED_PREFIX_CHARS = 4096


def _bounded_rejected(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with a huge `raw` value cut to a prefix, its full length and sha256 (to find it in the source)."""
    raw = row.get("raw")
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    if len(text) <= MAX_REJECTED_ROW_CHARS:
        return row
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    cut = {"prefix": text[:_REJECTED_PREFIX_CHARS], "chars": len(text), "sha256": digest, "truncated": True}
    return {**row, "raw": cut}


def rejected_line(rej: Rejected) -> bytes:
    """One line of rejected.jsonl (with its newline). Lone surrogates are written escaped; a huge row is
    kept as a prefix with its length and sha256."""
    row = _bounded_rejected(rej.to_json())
    try:
        line = json.dumps(row, ensure_ascii=False).translate(_LINE_BREAK_ESCAPES)
        return (line + "\n").encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: only \\u escapes can carry them
        return (json.dumps(row) + "\n").encode("ascii")


@dataclass
class Stats:
    """Everything the report and manifest count, gathered while the rows stream past."""

    read: int = 0
    kept: int = 0
    splits: Counter = field(default_factory=Counter)
    first_reasons: Counter = field(default_factory=Counter)  # each rejected row under its first reason
    all_reasons: Counter = field(default_factory=Counter)  # every reason of every rejected row
    truncated: int = 0
    cleaned: Counter = field(default_factory=Counter)
    columns_seen: Counter = field(default_factory=Counter)
    label_counts: Counter = field(default_factory=Counter)
    token_min: int | None = None
    token_max: int = 0
    token_total: int = 0
    label_names: list[str] | None = None
    template: str = ""
    prompt_add_special_tokens: bool = True
    images: Any = field(default_factory=hashlib.sha256)  # vision: running hash of the images' content hashes
    column_types: dict[str, Counter] = field(default_factory=dict)  # prompt: extra column -> types seen

    @property
    def rejected(self) -> int:
        return sum(self.first_reasons.values())

    def reject(self, reasons: list[str]) -> None:
        self.first_reasons[reasons[0]] += 1
        self.all_reasons.update(reasons)

    def keep(self, split: str, length: int, truncated: bool, changed: list[str], label: str | None) -> None:
        self.kept += 1
        self.splits[split] += 1
        self.truncated += bool(truncated)
        self.cleaned.update(changed)
        if label is not None:
            self.label_counts[label] += 1
        self.token_min = length if self.token_min is None else min(self.token_min, length)
        self.token_max = max(self.token_max, length)
        self.token_total += length

    def token_stats(self) -> dict[str, float]:
        if not self.kept:
            return {}
        mean = round(self.token_total / self.kept, 2)
        return {"min": self.token_min, "max": self.token_max, "mean": mean, "total": self.token_total}


def output_features(
    dc: DataConfig, label_names: list[str] | None, column_types: dict[str, str] | None = None
):
    """Columns of the prepared splits, in order (`column_types`: data.kind prompt's extra columns)."""
    import datasets

    if dc.kind == "prompt":
        return prompt.output_features(column_types or {})
    if dc.kind in PREFERENCE_KINDS:
        return preference_features(dc.kind)
    token = datasets.Value("int32")
    causal = dc.kind != "classification"
    features = {
        "input_ids": datasets.List(token),
        "attention_mask": datasets.List(datasets.Value("int8")),
        "labels": datasets.List(token) if causal else datasets.ClassLabel(names=label_names),
    }
    text_columns = ("prompt", "response") if causal else ("text", "label_text")
    features.update({name: datasets.Value("string") for name in (*text_columns, "source")})
    if dc.kind == "vision":  # the rendered conversation and the verified images (bytes, never pixels)
        features["text"] = datasets.Value("string")
        features["images"] = datasets.List(
            {
                "bytes": datasets.Value("binary"),
                "sha256": datasets.Value("string"),
                "width": datasets.Value("int32"),
                "height": datasets.Value("int32"),
            }
        )
    return features


def _helper_features() -> dict:
    """Columns of pass 2 that only pass 3 reads."""
    import datasets

    return {
        "pos": datasets.Value("int64"),
        "record": datasets.Value("string"),
        "changed": datasets.List(datasets.Value("string")),
        "length": datasets.Value("int32"),
        "truncated": datasets.Value("bool"),
        "problem": datasets.Value("string"),
        "detail": datasets.Value("string"),
        "exact": datasets.Value("binary"),
        "normalized": datasets.Value("binary"),
        "split": datasets.Value("string"),
    }


class _Encode:
    """Pass 2, one batch of candidates (a picklable callable, so `num_proc` workers can run it)."""

    def __init__(self, dc: DataConfig, formatter: Formatter, columns: tuple[str, ...]) -> None:
        self.dc, self.formatter, self.columns = dc, formatter, columns  # the output columns but "source"

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fields = [json.loads(f) for f in batch["fields"]]
        encoded = self.formatter.encode_batch(fields)
        out: dict[str, list] = {name: [] for name in (*self.columns, "source", *_HELPERS)}
        for row, enc in zip(fields, encoded):
            problem = token_problem(enc, self.dc, self.formatter)
            exact, normalized, split = row_keys(row, self.dc)
            values = enc.columns or {
                "input_ids": enc.input_ids,
                "attention_mask": [1] * len(enc.input_ids),
                "labels": enc.labels,
            }
            for name in self.columns:
                out[name].append(values[name] if name in values else enc.text.get(name))  # vision: below
            out["length"].append(len(enc.input_ids))
            out["truncated"].append(enc.truncated)
            out["problem"].append(problem[0] if problem else None)
            out["detail"].append(problem[1] if problem else None)
            out["exact"].append(exact)
            out["normalized"].append(normalized)
            out["split"].append(split)
        if self.dc.kind == "vision":
            out["text"] = [enc.text["text"] for enc in encoded]
            out["images"] = [
                [{**img, "bytes": base64.b64decode(img["bytes"])} for img in row["images"]] for row in fields
            ]
        for name in ("source", "pos", "record", "changed"):
            out[name] = batch[name]
        return out


_HELPERS = (
    "pos",
    "record",
    "changed",
    "length",
    "truncated",
    "problem",
    "detail",
    "exact",
    "normalized",
    "split",
)


def _spool_line(pos: int, rej: Rejected) -> bytes:
    return b"%d\t" % pos + rejected_line(rej)


def _read_spool(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for line in f:
            pos, _, rest = line.partition(b"\t")
            yield int(pos), rest


def _bar(desc: str, total: int | None, unit: str = "rows"):
    """A progress bar (rows, rate, ETA) on a terminal; nothing when stderr is not one."""
    return tqdm(total=total, desc=desc, unit=f" {unit}", disable=not sys.stderr.isatty(), dynamic_ncols=True)


@contextlib.contextmanager
def datasets_bars_on_terminal() -> Iterator[None]:
    """`datasets`' own progress bars (map, save) only when stderr is a terminal, like ours; restored after."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _screen_pass(
    records: Iterable[Record], dc: DataConfig, work: Path, spool: IO[bytes], stats: Stats, total: int | None
) -> tuple[Path, set[str]]:
    """Pass 1: candidates to an Arrow file, rejected rows to the spool; returns the file and labels seen."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    path = work / "candidates.arrow"
    features = datasets.Features(
        {
            "pos": datasets.Value("int64"),
            "source": datasets.Value("string"),
            "record": datasets.Value("string"),
            "fields": datasets.Value("string"),
            "changed": datasets.List(datasets.Value("string")),
        }
    )
    allowed = allowed_label_set(dc)
    labels_seen: set[str] = set()
    with (
        ArrowWriter(features=features, path=str(path), writer_batch_size=BATCH) as writer,
        _bar("prepare: read and clean", total) as bar,
    ):
        for pos, rec in enumerate(records):
            stats.read += 1
            bar.update()
            if rec.error is None and isinstance(rec.data, dict):
                stats.columns_seen.update(str(k) for k in rec.data)
            cand, problems = screen(rec, dc, allowed)
            if cand is None:
                rej = Rejected(rec, [r for r, _ in problems], [d for _, d in problems])
                stats.reject(rej.reasons)
                spool.write(_spool_line(pos, rej))
                continue
            if dc.kind == "classification":
                labels_seen.add(cand.fields["label"])
            if dc.kind == "prompt":
                prompt.observe(stats.column_types, cand.fields)
            if dc.kind == "vision":
                for image in cand.fields["images"]:
                    stats.images.update(bytes.fromhex(image["sha256"]))
            writer.write(
                {
                    "pos": pos,
                    "source": rec.where,
                    "record": json.dumps([rec.source, rec.index, rec.line, rec.data]),
                    "fields": json.dumps(cand.fields),
                    "changed": sorted(cand.changed),
                }
            )
        writer.finalize()
    return path, labels_seen


def _decide_pass(encoded, dc: DataConfig, spool: IO[bytes], stats: Stats, work: Path) -> dict[str, SplitRows]:
    """Pass 3: de-duplicate in input order; the row numbers (in `encoded`) of each split, in files in `work`."""
    columns = ["pos", "record", "changed", "length", "truncated", "problem", "detail", "exact", "split"]
    if dc.kind == "classification":
        columns.append("label_text")
    small = encoded.select_columns(columns)
    dup_rows, first_rows = duplicates(encoded, dc.clean.dedup)
    firsts = encoded.select_columns(["source", "exact"])  # read for the duplicates only
    k = 0  # dup_rows[k] is the next duplicate
    next_dup = int(dup_rows[0]) if len(dup_rows) else -1
    splits = {split: SplitRows(work / f"rows-{split}.arrow") for split in SPLITS}
    row = 0
    with contextlib.ExitStack() as stack, _bar("prepare: de-duplicate and split", len(encoded)) as bar:
        for rows in splits.values():
            stack.callback(rows.close)
        for batch in small.iter(batch_size=BATCH):
            for i in range(len(batch["pos"])):
                reason, detail = batch["problem"][i], batch["detail"][i]
                if row == next_dup:  # a row without a token problem that repeats a kept row
                    first = firsts[int(first_rows[k])]
                    k += 1
                    next_dup = int(dup_rows[k]) if k < len(dup_rows) else -1
                    same = dc.clean.dedup == "exact" or first["exact"] == batch["exact"][i]
                    reason = Reason.DUPLICATE_EXACT if same else Reason.DUPLICATE_NORMALIZED
                    detail = duplicate_detail(reason, first["source"])
                if reason is not None:
                    source, index, line, data = json.loads(batch["record"][i])
                    rec = Record(source=source, index=index, line=line, data=data)
                    stats.reject([reason])
                    spool.write(_spool_line(batch["pos"][i], Rejected(rec, [reason], [detail])))
                else:
                    splits[batch["split"][i]].add(row)
                    label = batch["label_text"][i] if dc.kind == "classification" else None
                    stats.keep(
                        batch["split"][i],
                        batch["length"][i],
                        batch["truncated"][i],
                        batch["changed"][i],
                        label,
                    )
                row += 1
            bar.update(len(batch["pos"]))
    return splits


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A binary file written under a temporary name and renamed into place (with the umask's mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_rejected(path: Path, spools: list[Path]) -> None:
    """rejected.jsonl from the spools (each in input order), merged by input position, written atomically."""
    with atomic_file(path) as f:
        for _, line in heapq.merge(*(_read_spool(p) for p in spools), key=lambda item: item[0]):
            f.write(line)


def run(
    records: Iterable[Record],
    dc: DataConfig,
    tokenizer,
    work: Path,
    rejected_path: Path,
    num_proc: int | None = None,
    total: int | None = None,
    prompt_needs: prompt.PromptNeeds | None = None,
) -> tuple[Stats, dict[str, Any]]:
    """Stream `records` through the pipeline; writes `rejected_path` and returns the counts and each
    split as a `datasets.Dataset` over Arrow files in `work` (which must outlive them). `prompt_needs`:
    data.kind prompt, what the run's rewards and completion length ask of each row."""
    import datasets

    stats = Stats()
    spools = [work / "rejected-screen.spool", work / "rejected-decide.spool"]
    with open(spools[0], "wb") as spool:
        path, labels_seen = _screen_pass(records, dc, work, spool, stats, total)
    stats.label_names = label_names_for(dc, allowed_label_set(dc), labels_seen)
    formatter = Formatter(dc, tokenizer, stats.label_names or ())
    stats.template, stats.prompt_add_special_tokens = formatter.template, formatter.prompt_add_special_tokens

    types = prompt.column_types(stats.column_types) if dc.kind == "prompt" else None
    formatter.prompt_needs, formatter.column_types = prompt_needs, types
    features = output_features(dc, stats.label_names, types)
    columns = tuple(name for name in features if name != "source")
    all_features = datasets.Features({**features, **_helper_features()})
    candidates = datasets.Dataset.from_file(str(path))
    if len(candidates) == 0:  # map would hand back its input unchanged
        encoded = datasets.Dataset.from_dict({name: [] for name in all_features}, features=all_features)
    else:
        with datasets_bars_on_terminal():
            encoded = candidates.map(
                _Encode(dc, formatter, columns),
                batched=True,
                batch_size=BATCH,
                writer_batch_size=BATCH,
                remove_columns=candidates.column_names,
                features=all_features,
                num_proc=num_proc if num_proc and num_proc > 1 and len(candidates) > BATCH else None,
                cache_file_name=str(work / "encoded.arrow"),
                new_fingerprint="prepare-encode",
                desc="prepare: format and tokenize",
            )
    with open(spools[1], "wb") as spool:
        rows = _decide_pass(encoded, dc, spool, stats, work)
    write_rejected(rejected_path, spools)
    final = encoded.remove_columns(list(_HELPERS))
    return stats, {split: rows[split].select(final) for split in SPLITS}
