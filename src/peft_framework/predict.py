"""`peft-framework predict`: use what the pipeline trained on new inputs, for every `model.task`.

    peft-framework predict params.yaml --text "Great value, works as described."
    peft-framework predict params.yaml --input reviews.jsonl --output predictions.jsonl --use both
    peft-framework predict models/merged --text "..."                 # an exported model as is
    peft-framework predict builtin:tiny-llama --adapter models/adapter --text "..."

TARGET is a config (its model section is the base, train.output_dir the adapter, export.output_dir the
merged model), a model (hub id, local dir, builtin:*; with --adapter DIR the base of that adapter), or an
unmerged export (base_model.json + adapter). Classifiers give the label and every class's probability
(class names from the model config, or the adapter's manifest); causal LMs give the greedy completion of
each prompt, formatted with the template the adapter was trained with. `--use both` runs the adapter on
its base and the merged model side by side, with `agree` per row. Files are JSON Lines in and out: each
output row is the input row plus the predictions, in input order, written atomically; a bad row is an
`error:` naming its line before any model is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_framework.config.schema import Config, DataConfig, ModelConfig
from peft_framework.errors import UserError

USES = ("adapter", "merged", "both")
TASKS = ("causal_lm", "sequence_classification")
ADAPTER = "adapter"  # the name the adapter is loaded under
_PEFT_TASKS = {"SEQ_CLS": "sequence_classification", "CAUSAL_LM": "causal_lm"}


# ------------------------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """What TARGET and the options resolve to: the task, and where each variant comes from."""

    task: str
    base: ModelConfig | None = None  # the adapter's base model
    adapter_dir: Path | None = None
    unmerged_export: Path | None = None  # base_model.json + adapter: loads as the adapter variant
    merged_dir: Path | None = None
    data: DataConfig | None = None  # the training data section: prompt template, max_seq_len
    label_names: list[str] | None = None  # from the adapter's manifest
    notes: dict[str, str] = field(default_factory=dict)  # variant -> why it is not available

    def variants(self, use: str | None) -> list[str]:
        available = [v for v in (ADAPTER, "merged") if v not in self.notes]
        if use is None:
            use = ADAPTER if ADAPTER in available else "merged"
        wanted = [ADAPTER, "merged"] if use == "both" else [use]
        for variant in wanted:
            if variant in self.notes:
                raise UserError(f"--use {use}: {self.notes[variant]}")
        return wanted


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _adapter_facts(adapter_dir: Path) -> tuple[str | None, DataConfig | None, list[str] | None]:
    """The task, data section and class names the adapter was trained with (its manifest.json), or Nones."""
    manifest = _read_json(adapter_dir / "manifest.json")
    task = (manifest.get("base_model") or {}).get("task")
    if task is None:
        task = _PEFT_TASKS.get(_read_json(adapter_dir / "adapter_config.json").get("task_type"))
    data = None
    raw = (manifest.get("config") or {}).get("data")
    if isinstance(raw, dict):
        try:
            data = DataConfig.model_validate(raw)
        except ValueError:
            data = None
    labels = (manifest.get("data") or {}).get("label_names")
    return task, data, labels


def _is_export(directory: Path) -> bool:
    return (directory / "base_model.json").is_file()


def _merged_note(merged_dir: Path, key: str) -> str | None:
    if _is_export(merged_dir):
        reason = _read_json(merged_dir / "base_model.json").get("reason", "the adapter was not merged")
        return f"{key} {merged_dir} is an unmerged export ({reason}); allowed: --use adapter"
    if not (merged_dir / "config.json").is_file():
        return (
            f"{key} {merged_dir} holds no model (config.json missing); run the export stage first (dvc repro)"
        )
    return None


def _adapter_note(adapter_dir: Path, key: str) -> str | None:
    if not (adapter_dir / "adapter_config.json").is_file():
        return (
            f"{key} {adapter_dir} holds no adapter (adapter_config.json missing); run the train stage first "
            "(dvc repro)"
        )
    return None


def plan_for_config(config: Config, adapter: str | None = None) -> Plan:
    """TARGET is a config: base = model section, adapter = --adapter or train.output_dir, merged =
    export.output_dir."""
    from peft_framework.models.loading import resolve_model_path

    model = resolve_model_path(config, ".").model
    adapter_dir = Path(adapter or config.train.output_dir)
    key = "--adapter" if adapter else "train.output_dir:"
    plan = Plan(task=model.task, base=model, adapter_dir=adapter_dir, data=config.data)
    note = _adapter_note(adapter_dir, key)
    if note:
        plan.notes[ADAPTER] = note
    _, _, plan.label_names = _adapter_facts(adapter_dir)
    merged = plan.merged_dir = Path(config.export.output_dir)
    note = _merged_note(merged, "export.output_dir:")
    if note:
        plan.notes["merged"] = note
    return plan


def plan_for_model(target: str, adapter: str | None = None, task: str | None = None) -> Plan:
    """TARGET is a model: with --adapter, the adapter's base; an unmerged export; else a model used as is."""
    path = Path(target)
    if adapter is not None:
        adapter_dir = Path(adapter)
        note = _adapter_note(adapter_dir, "--adapter")
        if note:
            raise UserError(note)
        trained_task, data, labels = _adapter_facts(adapter_dir)
        task = task or trained_task or "causal_lm"
        plan = Plan(task=task, base=ModelConfig(name_or_path=target, task=task), adapter_dir=adapter_dir)
        plan.data, plan.label_names = data, labels
        plan.notes["merged"] = (
            "TARGET is the adapter's base model; the merged model needs a config (params.yaml)"
        )
        return plan
    if path.is_dir() and _is_export(path):
        info = _read_json(path / "base_model.json")
        trained_task, data, labels = _adapter_facts(path)
        plan = Plan(
            task=task or info.get("task") or trained_task or "causal_lm", unmerged_export=path, data=data
        )
        plan.label_names = info.get("label_names") or labels
        plan.notes["merged"] = f"TARGET {path} is an unmerged export ({info.get('reason', 'not merged')})"
        return plan
    from peft_framework.models.heads import architectures, head_kind

    if task is None:
        archs = architectures(ModelConfig(name_or_path=target))
        task = (head_kind(archs) if archs else None) or "causal_lm"
    plan = Plan(
        task=task,
        merged_dir=path if path.is_dir() else None,
        base=ModelConfig(name_or_path=target, task=task),
    )
    plan.notes[ADAPTER] = "TARGET is a model used as is; give --adapter DIR (or a config) for an adapter"
    return plan


# ------------------------------------------------------------------------------------------- inputs
@dataclass
class Row:
    """One input: the fields it came with (kept in the output) and the text the model sees."""

    fields: dict[str, Any]
    text: str
    chat: bool = False  # wrap in the tokenizer's chat template (chat-trained adapters)


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON objects of a JSON Lines file (blank lines skipped) and their line numbers; a line that is
    not a JSON object is an error."""
    rows, numbers = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise UserError(f"--input {path}: line {number} is not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise UserError(
                        f"--input {path}: line {number}: got {type(row).__name__}; allowed: a JSON object"
                    )
                rows.append(row)
                numbers.append(number)
    except FileNotFoundError:
        raise UserError(f"--input {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--input {path}: not UTF-8 text ({exc})") from None
    return rows, numbers


def model_inputs(rows: Sequence[dict[str, Any]], task: str, data: DataConfig | None, where: str) -> list[Row]:
    """The model input of each row. Classification: `text`. Causal LM: `prompt` (the model input as is), or
    `text`/`instruction` (+ `input`), formatted with the training template (alpaca, plain, chat template)."""
    from peft_framework.data.formatting import format_instruction, resolve_template

    template = resolve_template(data) if data is not None and task == "causal_lm" else "none"
    fields = ("text",) if task == "sequence_classification" else ("prompt", "text", "instruction")
    out = []
    for i, row in enumerate(rows):
        key = next((k for k in fields if isinstance(row.get(k), str)), None)
        if key is None:
            raise UserError(
                f"{where(i)}: no text; allowed: a string field {' or '.join(repr(f) for f in fields)}"
                + (" (plus an optional 'input')" if task == "causal_lm" else "")
            )
        text, extra = row[key], row.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{where(i)}: 'input' must be a string, got {type(extra).__name__}")
        if key == "prompt" or template == "none":
            out.append(Row(row, text + (f"\n{extra}" if extra else "")))
        elif template == "chat_template":
            out.append(Row(row, f"{text}\n\n{extra}" if extra else text, chat=True))
        else:
            out.append(Row(row, format_instruction(text, extra, template)))
    return out


# ------------------------------------------------------------------------------------------- models
def _config_label_names(directory: Path) -> list[str] | None:
    config = _read_json(directory / "config.json")
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    return [str(id2label.get(str(i), i)) for i in range(len(id2label))]


def load_variant(plan: Plan, variant: str, device: str | None = None):
    """The MultiAdapterModel of a variant (adapter active for the adapter variant)."""
    from peft_framework.inference import MultiAdapterModel
    from peft_framework.models.heads import check_head

    classification = plan.task == "sequence_classification"
    if variant == ADAPTER and plan.unmerged_export is not None:
        return MultiAdapterModel.from_export(plan.unmerged_export, name=ADAPTER, device=device)
    if variant == ADAPTER:
        from peft_framework.adapters.checkpoint import read_adapter_config
        from peft_framework.models.saved_tokenizer import adapter_tokenizer

        assert plan.base is not None and plan.adapter_dir is not None
        saves_head = bool(read_adapter_config(plan.adapter_dir).get("modules_to_save"))
        check_head(plan.base, what="predict", head_from_adapter=saves_head, key="model.name_or_path")
        if classification and not plan.label_names and plan.base.num_labels is None:
            raise UserError(
                f"{plan.adapter_dir}: cannot tell the classes (its manifest.json has no data.label_names); "
                "allowed: an adapter written by the train stage"
            )
        if classification and not saves_head:
            raise UserError(
                f"{plan.adapter_dir}: the adapter does not save the classification head "
                "(adapter.modules_to_save is empty), so the head would be random; allowed: an adapter trained with "
                "adapter.modules_to_save: [classifier] (or [score]), or the merged export"
            )
        tokenizer = adapter_tokenizer(plan.base, plan.adapter_dir)
        model = MultiAdapterModel.from_base(
            plan.base, tokenizer=tokenizer, device=device, label_names=plan.label_names
        )
        model.load_adapter(ADAPTER, plan.adapter_dir)
        model.set_adapter(ADAPTER)
        return model
    merged = plan.merged_dir
    if merged is not None:
        model_config = ModelConfig(name_or_path=str(merged), task=plan.task)
    else:
        assert plan.base is not None
        model_config = plan.base
    check_head(model_config, what="predict", key="--use merged" if merged else "TARGET")
    labels = _config_label_names(merged) if (merged and classification) else None
    if classification and not labels:
        raise UserError(f"{model_config.name_or_path}: config.json names no classes (id2label)")
    return MultiAdapterModel.from_base(model_config, device=device, label_names=labels)


# ------------------------------------------------------------------------------------------ predict
def _batches(rows: Sequence[Row], size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar length (longest first: less padding, and an out-of-memory shows at
    once); the caller puts the results back in input order."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].text))
    for start in range(0, len(order), size):
        yield order[start : start + size]


def run_variant(
    model,
    rows: Sequence[Row],
    task: str,
    *,
    batch_size: int,
    max_length: int | None,
    max_new_tokens: int,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Predictions of one model for every row, in row order."""
    results: list[dict[str, Any] | None] = [None] * len(rows)
    adapter = model.active_adapter
    labels = model.label_names if task == "sequence_classification" else []
    for idx in _batches(rows, batch_size):
        if task == "sequence_classification":
            probs = model.classify(
                [rows[i].text for i in idx], adapter=adapter, batch_size=batch_size, max_length=max_length
            )
            for i, p in zip(idx, probs):
                best = max(range(len(p)), key=p.__getitem__)
                results[i] = {"label": labels[best], "probabilities": dict(zip(labels, p))}
        else:
            for chat in (False, True):
                part = [i for i in idx if rows[i].chat is chat]
                if not part:
                    continue
                texts = model.generate(
                    [rows[i].text for i in part],
                    adapter=adapter,
                    max_new_tokens=max_new_tokens,
                    chat=chat,
                    batch_size=batch_size,
                )
                for i, text in zip(part, texts):
                    results[i] = {"completion": text}
        if progress is not None:
            progress(len(idx))
    return [r for r in results if r is not None]


def combine(rows: Sequence[Row], per_variant: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Output rows: the input fields plus the predictions (flat for one variant; nested per variant, with
    `agree`, for both)."""
    out = []
    for i, row in enumerate(rows):
        base = dict(row.fields)
        if len(per_variant) == 1:
            base.update(next(iter(per_variant.values()))[i])
        else:
            answers = {name: preds[i] for name, preds in per_variant.items()}
            base.update(answers)
            key = "label" if "label" in answers[ADAPTER] else "completion"
            base["agree"] = len({a[key] for a in answers.values()}) == 1
        out.append(base)
    return out


def predict(
    plan: Plan,
    rows: Sequence[dict[str, Any]],
    *,
    use: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    device: str | None = None,
    progress: bool = False,
    where: Callable[[int], str] = lambda i: f"--text #{i + 1}",
) -> list[dict[str, Any]]:
    """Predict every row with each variant `use` names; rows are validated before any model loads."""
    variants = plan.variants(use)
    inputs = model_inputs(rows, plan.task, plan.data, where)
    max_length = plan.data.max_seq_len if plan.data is not None else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(inputs) * len(variants), unit="row", desc="predict", dynamic_ncols=True)
    per_variant = {}
    try:
        for variant in variants:
            model = load_variant(plan, variant, device)
            if bar is not None:
                bar.set_postfix_str(variant)
            per_variant[variant] = run_variant(
                model,
                inputs,
                plan.task,
                batch_size=batch_size,
                max_length=max_length or _model_max_length(model.tokenizer),
                max_new_tokens=max_new_tokens,
                progress=bar.update if bar is not None else None,
            )
            del model
    finally:
        if bar is not None:
            bar.close()
    return combine(inputs, per_variant)


def _model_max_length(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit <= 1_000_000 else None


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """All rows at once, atomically: a killed run leaves the previous file (or none), never half of one."""
    from peft_framework.io import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def predict_file(plan: Plan, input_path: Path, output_path: Path, **kwargs: Any) -> dict[str, Any]:
    """`--input FILE --output FILE`: every row of a JSON Lines file, with a progress bar."""
    if output_path.resolve() == input_path.resolve() or (
        output_path.exists() and input_path.exists() and os.path.samefile(output_path, input_path)
    ):
        raise UserError(
            f"--output {output_path}: is the --input file; allowed: another path (the input is kept)"
        )
    rows, numbers = read_rows(input_path)
    if not rows:
        raise UserError(f"--input {input_path}: no rows")
    where = lambda i: f"--input {input_path}: line {numbers[i]}"  # noqa: E731
    results = predict(plan, rows, progress=True, where=where, **kwargs)
    write_jsonl(output_path, results)
    return {"input": str(input_path), "output": str(output_path), "rows": len(results), "task": plan.task}
