"""The train stage's input: the DatasetDict `prepare` wrote to `data.output_dir`, checked for the task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_framework.config.schema import Config
from peft_framework.errors import DataError
from peft_framework.io import dir_sha256
from peft_framework.paths import resolve
from peft_framework.provenance import read_manifest


@dataclass(frozen=True)
class PreparedData:
    dataset: Any  # the whole DatasetDict (its row counts go into the manifest)
    manifest: dict[str, Any]
    directory: Path
    sha256: str  # of the directory: part of the run fingerprint and the manifest
    label_names: list[str] | None
    train: Any  # the train split, model columns only
    eval: Any | None  # the validation split, model columns only; None when there is none


def load_prepared(config: Config, root: Path) -> PreparedData:
    """The prepared data; DataError when it is missing or does not fit the task."""
    import datasets

    data_dir = resolve(root, config.data.output_dir)
    if not (data_dir / "dataset_dict.json").is_file():
        raise DataError(
            f"data.output_dir: {config.data.output_dir!r} holds no prepared data ({data_dir}); "
            "run `peft-framework prepare` first"
        )
    manifest = read_manifest(data_dir)
    task = manifest.get("task")
    if task is not None and task != config.model.task:
        raise DataError(
            f"data.output_dir: the data in {config.data.output_dir!r} was prepared for model.task {task!r}, "
            f"but model.task is {config.model.task!r}; prepare the data again"
        )
    _check_max_seq_len(config, manifest)
    dataset = datasets.load_from_disk(str(data_dir))
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise DataError(f"data.output_dir: {config.data.output_dir!r} has no training rows")
    columns = model_columns(config)
    missing = [
        c for c in columns if c not in ("attention_mask", "*") and c not in dataset["train"].column_names
    ]
    if missing:
        raise DataError(
            f"data.output_dir: the train split lacks columns {missing} (train.objective "
            f"{config.train.objective!r}); has {dataset['train'].column_names}; prepare the data again"
        )
    label_names = manifest.get("label_names")
    if label_names is None and config.model.task == "sequence_classification":
        feature = dataset["train"].features.get("labels")
        label_names = list(getattr(feature, "names", None) or []) or None
    has_eval = "validation" in dataset and len(dataset["validation"])
    return PreparedData(
        dataset=dataset,
        manifest=manifest,
        directory=data_dir,
        sha256=dir_sha256(data_dir),
        label_names=label_names,
        train=_select(dataset["train"], columns),
        eval=_select(dataset["validation"], columns) if has_eval else None,
    )


def _check_max_seq_len(config: Config, manifest: dict[str, Any]) -> None:
    """Data prepared with a longer data.max_seq_len holds rows longer than this run allows (packing would
    build packs of about the old length): refuse it. Shorter is fine: every row fits."""
    prepared = (manifest.get("format") or {}).get("max_seq_len")
    wanted = config.data.max_seq_len
    if isinstance(prepared, int) and prepared > wanted:
        raise DataError(
            f"data.max_seq_len: {wanted}, but the data in {config.data.output_dir!r} was prepared with "
            f"data.max_seq_len {prepared}: its rows (and packs) may be longer than {wanted} tokens; re-run "
            f"prepare with data.max_seq_len={wanted}, or train with data.max_seq_len={prepared}"
        )


def model_columns(config: Config) -> tuple[str, ...]:
    """The prepared columns the objective's collator reads."""
    from peft_framework.training import objectives

    objective = objectives.get(config.train.objective, config.train)
    columns = objective.columns
    if getattr(objective, "keeps_extra_columns", False):
        columns = (*columns, "*")
    if config.model.task == "image_text_to_text":  # vision rows: the processor needs the text and the images
        from peft_framework.models.vision_batch import VISION_COLUMNS

        columns = (*columns, *VISION_COLUMNS)
    return columns


def _select(split: Any, columns: tuple[str, ...]) -> Any:
    if "*" in columns:  # the objective reads every column (GRPO: the rewards' data columns)
        return split
    return split.select_columns([c for c in columns if c in split.column_names])
