"""Find the input files of `data.source` and read them row by row, keeping file and line of every row.

JSON Lines, JSON and CSV files are read here rather than with `datasets`' builders: those parse a whole
file at once (into typed Arrow columns) and abort on the first undecodable byte, malformed line or type
clash, while here each such line must become one rejected row with its line number. Parquet files, saved
`datasets` directories and HuggingFace Hub datasets are already typed and decoded; `datasets` reads them.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from peft_framework.data import hub
from peft_framework.data.rows import Reason, Record
from peft_framework.errors import DataError

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
HF_PREFIX = "hf:"
_SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")


@dataclass
class Source:
    """One input: a file, a saved `datasets` directory, or a Hub dataset."""

    display: str  # as reported: relative to the project root when inside it
    format: str  # jsonl | json | csv | tsv | parquet | saved | hf
    path: Path | None = None  # None for Hub datasets
    rows: int = 0
    blank_lines: int = 0
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _display(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _format_of(path: Path, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return EXTENSIONS.get(suffixes[-1]) if suffixes else None


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _SAVED_DATASET_MARKERS)


def resolve_sources(source: str | list[Any], fmt: str, root: str | Path) -> list[Source]:
    """Expand files, globs, directories and `hf:` ids into a sorted, de-duplicated list of sources."""
    root = Path(root)
    # weighted entries ({path, weight|count}: data/mixing.py) are read like their path
    entries = [source] if isinstance(source, str) else [getattr(e, "path", e) for e in source]
    if not entries:
        raise DataError(
            "data.source is empty; allowed: a file, glob, directory, list of those, or 'hf:owner/name'"
        )
    found: list[Source] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.startswith(HF_PREFIX):
            name = entry[len(HF_PREFIX) :]
            if not name:
                raise DataError(f"data.source: {entry!r} names no dataset; allowed: 'hf:owner/name'")
            name, revision = hub.split_revision(entry)  # hf:owner/name@REVISION
            found.append(Source(display=entry, format="hf", extra={"name": name, "revision": revision}))
            continue
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if glob.has_magic(entry):
            matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True))]
            files = [p for p in matches if p.is_file() and _format_of(p, fmt)]
            if not files:
                raise DataError(f"data.source: glob {entry!r} matches no data file (looked in {path.parent})")
        elif _is_saved_dataset(path):
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p, fmt))
            if not files:
                allowed = ", ".join(sorted(EXTENSIONS))
                raise DataError(
                    f"data.source: directory {entry!r} holds no data file; allowed extensions: {allowed}"
                )
        elif path.is_file():
            files = [path]
        else:
            hint = (
                " (run `peft-framework sample-data` to create the sample data)" if "data/raw" in entry else ""
            )
            raise DataError(f"data.source: {entry!r} does not exist (resolved to {path}){hint}")
        for file in files:
            key = str(file.resolve())
            if key in seen:
                continue
            seen.add(key)
            file_format = "saved" if _is_saved_dataset(file) else _format_of(file, fmt)
            if file_format is None:
                allowed = ", ".join(sorted(EXTENSIONS))
                raise DataError(
                    f"data.source: cannot tell the format of {entry!r}; "
                    f"set data.format or use one of: {allowed}"
                )
            found.append(Source(display=_display(file, root), format=file_format, path=file))
    return found


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _decode_error(exc: UnicodeDecodeError) -> str:
    bad = exc.object[exc.start : exc.end]
    return f"invalid UTF-8 byte(s) {bad!r} at byte {exc.start} of the line"


def _read_jsonl(src: Source) -> Iterator[Record]:
    assert src.path is not None
    index = 0
    with _open_binary(src.path) as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
                raw = raw[3:]
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                src.blank_lines += 1
                continue
            rec = Record(source=src.display, index=index, line=lineno)
            index += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rec.error = (Reason.INVALID_UTF8, _decode_error(exc))
                rec.raw = raw.decode("utf-8", errors="backslashreplace")
                yield rec
                continue
            try:
                rec.data = json.loads(text)
            except json.JSONDecodeError as exc:
                rec.error = (Reason.INVALID_JSON, f"not valid JSON: {exc.msg} at column {exc.colno}")
                rec.raw = text
            yield rec


def _read_json(src: Source) -> Iterator[Record]:
    """A JSON array of rows, an object holding one such array ({"data": [...]}), or (fallback) JSON Lines."""
    assert src.path is not None
    with _open_binary(src.path) as f:
        blob = f.read()
    try:
        doc = json.loads(blob.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        yield from _read_jsonl(src)  # many .json files are JSON Lines; otherwise errors are reported per line
        return
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        rows = lists[0] if len(lists) == 1 and len(doc) == 1 else [doc]
    elif isinstance(doc, list):
        rows = doc
    else:
        rows = [doc]
    for i, row in enumerate(rows):
        yield Record(source=src.display, index=i, data=row)


def _read_csv(src: Source) -> Iterator[Record]:
    """CSV/TSV with a header row. Every cell is a string (no type guessing): '42' stays the text '42'."""
    assert src.path is not None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delimiter = "\t" if src.format == "tsv" else ","
    with _open_binary(src.path) as fb:
        f = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{src.display}: cannot read the CSV header: {exc}") from exc
        bad_header = [h for h in header if _has_surrogates(h)]
        if bad_header:
            raise DataError(f"{src.display}: the CSV header is not valid UTF-8: {bad_header!r}")
        index = 0
        start = reader.line_num + 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Record(
                    source=src.display,
                    index=index,
                    line=start,
                    error=(Reason.INVALID_CSV, str(exc)),
                    raw=None,
                )
                index += 1
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if not cells:  # an empty line
                src.blank_lines += 1
                continue
            rec = Record(source=src.display, index=index, line=line)
            index += 1
            raw = delimiter.join(cells)
            if _has_surrogates(raw):
                rec.error = (Reason.INVALID_UTF8, "invalid UTF-8 byte(s) in the row")
                rec.raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            elif len(cells) != len(header):
                rec.error = (Reason.INVALID_CSV, f"row has {len(cells)} fields, the header has {len(header)}")
                rec.raw = raw
            else:
                rec.data = dict(zip(header, cells, strict=True))
            yield rec


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _iter_dataset(src: Source, dataset) -> Iterator[Record]:
    for i, row in enumerate(dataset):
        yield Record(source=src.display, index=i, data=row)


def _read_parquet(src: Source) -> Iterator[Record]:
    import datasets

    yield from _iter_dataset(src, datasets.Dataset.from_parquet(str(src.path)))


def _read_saved(src: Source, hf_split: str) -> Iterator[Record]:
    import datasets

    loaded = datasets.load_from_disk(str(src.path))
    if isinstance(loaded, datasets.DatasetDict):
        if hf_split not in loaded:
            raise DataError(
                f"data.hf_split: {hf_split!r} is not a split of {src.display}; allowed: {', '.join(loaded)}"
            )
        loaded = loaded[hf_split]
    src.extra["fingerprint"] = loaded._fingerprint
    yield from _iter_dataset(src, loaded)


def _read_hf(src: Source, hf_split: str, hf_config: str | None) -> Iterator[Record]:
    """A HuggingFace Hub dataset (needs network access, or the datasets cache), at its pinned commit."""
    import datasets

    name = src.extra["name"]
    path, revision = hub.load_target(src)  # at the commit `hub.pin` resolved, when it did
    try:
        dataset = datasets.load_dataset(path, hf_config, split=hf_split, revision=revision)
    except Exception as exc:  # network, missing dataset, unknown split/config: all the user's to fix
        at = f" at {revision!r}" if revision else (f" (cached snapshot {path})" if path != name else "")
        if src.extra.get("how") and src.extra.get("commit") is None:
            at += f" (commit unknown: {src.extra['how']})"
        raise DataError(
            f"data.source: cannot load HuggingFace dataset {name!r}{at} "
            f"(config {hf_config!r}, split {hf_split!r}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    src.extra["fingerprint"] = dataset._fingerprint
    yield from _iter_dataset(src, dataset)


def read_source(src: Source, hf_split: str = "train", hf_config: str | None = None) -> Iterator[Record]:
    """Yield every row of one source, counting rows (and blank lines) on `src`."""
    if src.format == "jsonl":
        rows = _read_jsonl(src)
    elif src.format == "json":
        rows = _read_json(src)
    elif src.format in ("csv", "tsv"):
        rows = _read_csv(src)
    elif src.format == "parquet":
        rows = _read_parquet(src)
    elif src.format == "saved":
        rows = _read_saved(src, hf_split)
    elif src.format == "hf":
        rows = _read_hf(src, hf_split, hf_config)
    else:  # pragma: no cover - formats are validated by the config schema
        raise DataError(f"data.format: unsupported format {src.format!r}")
    for rec in rows:
        src.rows += 1
        yield rec
