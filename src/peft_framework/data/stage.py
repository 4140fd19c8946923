"""The prepare stage: raw data -> `data.output_dir` (a DatasetDict) + rejected rows + report.

Outputs: `data.output_dir` holds the splits (saved with `save_to_disk`; an empty validation or test split
is left out, since `load_from_disk` cannot read one back) and `manifest.json`, written to a
temporary directory and renamed into place; `data.rejected_path` holds every rejected row with its
reasons, source file and line; `data.report_path` counts rows read, kept and rejected per reason. When
more rows are rejected than `data.validate.max_rejected_fraction` allows, the rejected file and the
report (status "failed") are written, a previous prepared output is removed, and DataError is raised.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from peft_framework.config.schema import DATA_FIELDS, Config, DataConfig
from peft_framework.data import hub, mixing, stream
from peft_framework.data.pipeline import SPLITS
from peft_framework.data.sources import Source, read_source
from peft_framework.data.stream import Stats
from peft_framework.errors import ConfigError, DataError
from peft_framework.io import (
    atomic_dir,
    canonical_json_sha256,
    check_output_dir,
    dir_sha256,
    file_sha256,
    numbers_only,
    write_json_atomic,
)
from peft_framework.locking import locked_stage
from peft_framework.models.chat_template import apply_data_chat_template, template_sha256
from peft_framework.paths import resolve
from peft_framework.provenance import made_by, write_manifest

log = logging.getLogger(__name__)

DETAILS = "report.json"
"""The full data report (sources and their hashes, rejects by reason, cleaning, label counts), inside
`data.output_dir`; `data.report_path` holds its numbers only (`data_metrics`)."""
CREATED_BY = "peft_framework.data.prepare"
FORMAT_VERSION = 1
#: the sample-data generator: not code that `prepare` runs, so not in its code hash
_SAMPLE_CODE = ("samples.py", "sample_vocab.py", "vision_samples.py", "sample_prompts.py")


def config_sha256(config: Config, content: dict[str, Any] | None = None) -> str:
    """Hash of what the prepared data depends on in the config: the data and model sections, and `content`:
    the hashes of what those name (the tokenizer's files, the chat template's text; `format_content`)."""
    dump = config.to_dict()
    dump["data"].pop("num_proc")  # how many processes, not what they produce
    return canonical_json_sha256({"data": dump["data"], "model": dump["model"], **(content or {})})


def format_content(tokenizer_id: dict[str, Any], chat_template: str | None) -> dict[str, Any]:
    """The content hashes that enter the data hash beside the config: tokenizer files, chat template."""
    return {
        "tokenizer_sha256": tokenizer_id["sha256"],
        "chat_template_sha256": template_sha256(chat_template),
    }


def code_sha256() -> str:
    """Hash of this package's source, for cache keys. Not in the manifest: the prepared data must stay
    byte-identical when only the code changes (then nothing downstream re-runs)."""
    here = Path(__file__).parent
    return canonical_json_sha256(
        {p.name: file_sha256(p) for p in sorted(here.glob("*.py")) if p.name not in _SAMPLE_CODE}
    )


def _with_base_dir(rec: Any, src: Source) -> Any:
    """The record with its source file's directory (image paths are relative to it)."""
    if src.path is not None:
        rec.base_dir = str(Path(src.path).parent)
    return rec


def prompt_needs(config: Config):
    """data.kind prompt: what the run's rewards and completion length ask of each row (data/prompt.py); it
    enters the prepared data's hash. None for the other kinds."""
    if config.data.kind != "prompt":
        return None
    from peft_framework.data.prompt import needs_of

    return needs_of(config)


def _check_task(config: Config) -> None:
    kind, task = config.data.kind, config.model.task
    if (kind == "vision") != (task == "image_text_to_text"):
        want = "image_text_to_text" if kind == "vision" else "causal_lm or sequence_classification"
        raise ConfigError(
            f"data.kind {kind!r} does not fit model.task {task!r}",
            [f"model.task: {task!r}; allowed with data.kind {kind!r}: {want}"],
        )
    if (kind == "classification") != (task == "sequence_classification"):
        want = "sequence_classification" if kind == "classification" else "causal_lm"
        raise ConfigError(
            f"data.kind {kind!r} does not fit model.task {task!r}",
            [f"model.task: {task!r}; allowed with data.kind {kind!r}: {want!r}"],
        )


def _remove_stale_output(out_dir: Path) -> bool:
    """Remove a previous prepared output (only if this stage made it), so a failed run leaves none."""
    if not made_by(out_dir, CREATED_BY):
        return False
    trash = out_dir.parent / f".{out_dir.name}.stale-{os.getpid()}"
    os.replace(out_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _counts(stats: Stats) -> dict[str, int]:
    return {
        "read": stats.read,
        "kept": stats.kept,
        "rejected": stats.rejected,
        **{split: stats.splits.get(split, 0) for split in SPLITS},
    }


def _estimate_rows(sources: list[Source]) -> int | None:
    """Rows to expect, for the progress bar's ETA: the lines of uncompressed text files (blank ones too)."""
    total = 0
    for src in sources:
        if src.path is None or src.format not in ("jsonl", "csv", "tsv") or src.path.suffix == ".gz":
            return None
        with open(src.path, "rb") as f:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda f=f: f.read(1 << 20), b""))
    return total


def _dataset_dict(splits: dict[str, Any], manifest: dict[str, Any]):
    """The DatasetDict to save. Each split's `datasets` fingerprint (state.json) is derived from what the
    data depends on (config and input hashes), so a re-run writes the same bytes."""
    import datasets

    out = {}
    for split, ds in splits.items():
        if len(ds) == 0 and split != "train":
            # datasets cannot load an empty split back from disk (IndexError in load_from_disk): leave it
            # out; the manifest's counts still say it is empty and the stages that need it say so
            continue
        ds._split = datasets.NamedSplit(split)
        ds._fingerprint = canonical_json_sha256(
            {"split": split, "config": manifest["config_sha256"], "inputs": manifest["inputs"]}
        )[:16]
        out[split] = ds
    return datasets.DatasetDict(out)


def _missing_column_hints(result: Stats, dc: DataConfig) -> list[str]:
    """When a mapped column is in no row at all, say which columns the data does have."""
    if not result.columns_seen:
        return []
    hints = []
    for name in DATA_FIELDS[dc.kind]:
        if name in ("role", "content", "input"):
            continue
        column = dc.columns.get(name, name)
        if column not in result.columns_seen:
            seen = ", ".join(sorted(result.columns_seen)[:20])
            hints.append(
                f"column {column!r} (field {name!r}) is in no row; columns seen: {seen}; "
                "map it with data.columns"
            )
    return hints


def _report(result: Stats, dc: DataConfig, sources: list[Source], counts: dict[str, int]) -> dict[str, Any]:
    """The stage report (`data.report_path`): counts per reason, cleaning, truncation, sources."""
    report: dict[str, Any] = {
        "status": "ok",
        "kind": dc.kind,
        "template": result.template,
        "rows": {k: counts[k] for k in ("read", "kept", "rejected")},
        "splits": {split: counts[split] for split in SPLITS},
        "rejected_fraction": round(counts["rejected"] / counts["read"], 6) if counts["read"] else None,
        "max_rejected_fraction": dc.validate_.max_rejected_fraction,
        "rejected_by_reason": dict(sorted(result.first_reasons.items())),
        "reason_counts": dict(sorted(result.all_reasons.items())),
        "truncated": result.truncated,
        "cleaned": dict(sorted(result.cleaned.items())),
        "tokens": result.token_stats(),
        "sources": [
            {
                "path": s.display,
                "format": s.format,
                "rows": s.rows,
                "blank_lines": s.blank_lines,
                "sha256": s.sha256,
            }
            for s in sources
        ],
        "outputs": {
            "output_dir": dc.output_dir,
            "rejected_path": dc.rejected_path,
            "report_path": dc.report_path,
        },
        "warnings": [],
    }
    if result.label_names is not None:
        report["label_names"] = result.label_names
        report["label_counts"] = {name: result.label_counts.get(name, 0) for name in result.label_names}
    for split, fraction in (("validation", dc.split.validation), ("test", dc.split.test)):
        if fraction > 0 and counts[split] == 0:
            report["warnings"].append(
                f"split {split!r} is empty ({counts['kept']} rows kept, fraction {fraction})"
            )
    return report


def data_metrics(report: dict[str, Any]) -> dict[str, int | float]:
    """The numbers of the data report, flat and in a fixed layout (`data.report_path`, a DVC metric)."""
    tokens = report.get("tokens") or {}
    return numbers_only(
        {
            **{f"rows_{k}": v for k, v in report["rows"].items()},
            "rejected_fraction": report["rejected_fraction"],
            "truncated": report["truncated"],
            **{f"split_{k}": v for k, v in report["splits"].items()},
            "tokens_mean": tokens.get("mean"),
            "tokens_max": tokens.get("max"),
            "tokens_total": tokens.get("total"),
        }
    )


def _failure(result: Stats, dc: DataConfig, counts: dict[str, int]) -> DataError | None:
    """Why the prepared data must not be used, if it must not."""
    if counts["read"] == 0:
        return DataError(f"data.source: no rows read from {dc.source!r}")
    fraction = counts["rejected"] / counts["read"]
    if fraction > dc.validate_.max_rejected_fraction:
        reasons = dict(sorted(result.first_reasons.items()))
        return DataError(
            f"data: {counts['rejected']} of {counts['read']} rows rejected ({fraction:.1%}), more than "
            f"data.validate.max_rejected_fraction = {dc.validate_.max_rejected_fraction:g} allows. "
            f"Rejected rows per reason (each row with its file and line in {dc.rejected_path}):",
            [f"{k}: {v}" for k, v in reasons.items()] + _missing_column_hints(result, dc),
        )
    if counts["train"] == 0:
        return DataError(
            f"data: no row in the train split ({counts['kept']} rows kept); add data or lower "
            "data.split.validation / data.split.test"
        )
    return None


def _manifest(
    config: Config,
    result: Stats,
    tokenizer,
    inputs: dict,
    counts: dict,
    columns: list[str],
    tokenizer_id: dict,
    hub_content: dict | None = None,
) -> dict:
    """`manifest.json` of the prepared data: only what the data depends on, so re-runs are byte-identical."""
    dc = config.data
    chat_template = tokenizer.chat_template if result.template == "chat_template" else None
    return {
        "created_by": CREATED_BY,
        "format_version": FORMAT_VERSION,
        "kind": dc.kind,
        "task": config.model.task,
        "label_names": result.label_names,
        "columns": columns,
        "inputs": inputs,
        "config_sha256": config_sha256(
            config, {**format_content(tokenizer_id, chat_template), **(hub_content or {})}
        ),
        "rows": counts,
        "truncated": result.truncated,
        "format": {
            "template": result.template,
            "max_seq_len": dc.max_seq_len,
            "add_eos": dc.add_eos,
            "train_on_responses_only": dc.train_on_responses_only,
            "prompt_add_special_tokens": result.prompt_add_special_tokens,
            "chat_template_setting": dc.chat_template,
            "chat_template_sha256": template_sha256(chat_template),
            "chat_template": chat_template,
        },
        "tokenizer": {
            "name_or_path": config.model.name_or_path,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "source": tokenizer_id["source"],
            "commit": tokenizer_id["commit"],
            "files": tokenizer_id["files"],
            "sha256": tokenizer_id["sha256"],
        },
    }


def _source_hash(src: Source) -> str | None:
    if src.path is None:
        return src.extra.get("fingerprint")  # Hub dataset: the datasets fingerprint
    return dir_sha256(src.path) if src.format == "saved" else file_sha256(src.path)


@locked_stage("prepare")
def prepare(config: Config, root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Run the prepare stage; returns a JSON-able summary (paths, hashes, counts)."""
    from peft_framework.models.loading import load_tokenizer
    from peft_framework.models.tokenizer_identity import tokenizer_identity

    started = time.perf_counter()
    root = Path(root)
    dc = config.data
    _check_task(config)
    out_dir, rejected_path, report_path = (
        resolve(root, p) for p in (dc.output_dir, dc.rejected_path, dc.report_path)
    )

    sources = mixing.resolve(dc, root)  # data.source, weighted entries too
    hub.pin(sources)  # hf: datasets: the commit their revision names, read and hashed below
    inputs_paths = [src.path for src in sources]
    check_output_dir(out_dir, "data.output_dir", root, inputs_paths)
    tokenizer = load_tokenizer(config.model)
    tokenizer_id = tokenizer_identity(config.model, tokenizer, root)  # the files, before any change
    apply_data_chat_template(tokenizer, dc, root)
    needs = prompt_needs(config)
    records = (
        _with_base_dir(rec, src) for src in sources for rec in read_source(src, dc.hf_split, dc.hf_config)
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.work-", dir=out_dir.parent) as work,
        stream.datasets_bars_on_terminal(),
    ):
        result, splits = stream.run(
            records, dc, tokenizer, Path(work), rejected_path, dc.num_proc, _estimate_rows(sources), needs
        )
        splits, mixed = mixing.apply(splits, result, sources, dc, root)  # weighted data.source entries
        for src in sources:
            src.sha256 = _source_hash(src)
        inputs = {src.display: src.sha256 for src in sources}
        if dc.kind == "vision":  # the images the rows name: a changed image is a changed input
            inputs["images"] = result.images.hexdigest()
        counts = _counts(result)
        assert counts["kept"] + counts["rejected"] == counts["read"], "row accounting is broken"
        report = _report(result, dc, sources, counts)
        mixing.add_to_report(report, mixed)
        hub.add_to_report(report, sources)

        failure = _failure(result, dc, counts)
        if failure is not None:
            removed = _remove_stale_output(out_dir)
            report.update(status="failed", error=str(failure), removed_stale_output=removed)
            report["duration_s"] = round(time.perf_counter() - started, 3)
            write_json_atomic(report_path, report)
            raise failure

        manifest = _manifest(
            config,
            result,
            tokenizer,
            inputs,
            counts,
            splits["train"].column_names,
            tokenizer_id,
            {**(hub.hash_content(sources) or {}), **({"prompt_needs": needs.to_json()} if needs else {})},
        )
        manifest.update(hub.manifest_entries(sources))  # hf: datasets' commits
        dataset = _dataset_dict(splits, manifest)
        with atomic_dir(out_dir, key="data.output_dir", root=root, inputs=inputs_paths) as tmp:
            dataset.save_to_disk(str(tmp))
            write_manifest(tmp, manifest)
            write_json_atomic(tmp / DETAILS, report)
    report.update(dataset_sha256=dir_sha256(out_dir), code_sha256=code_sha256())
    report["duration_s"] = round(time.perf_counter() - started, 3)
    write_json_atomic(report_path, data_metrics(report))
    log.info(
        "prepared %d of %d rows into %s in %.1fs",
        counts["kept"],
        counts["read"],
        out_dir,
        report["duration_s"],
    )
    return {
        "output_dir": str(out_dir),
        "rejected_path": str(rejected_path),
        "report_path": str(report_path),
        "dataset_sha256": report["dataset_sha256"],
        "config_sha256": manifest["config_sha256"],
        "code_sha256": report["code_sha256"],
        "inputs": inputs,
        "rows": counts,
        "truncated": result.truncated,
        "rejected_by_reason": report["rejected_by_reason"],
        "label_names": result.label_names,
        "duration_s": report["duration_s"],
    }
