"""The harness stage: EleutherAI's lm-evaluation-harness on the base model and on base + adapter.

One base model is loaded; the adapter is injected into it once and switched off for the base run and
on for the adapter run (the adapter type's `set_active`), so there is no second load and no merge. lm-eval's HF
wrapper (`HFLM`) takes that live model and its tokenizer.

Outputs (written atomically):
- `reports/harness.json`: flat numbers for `dvc metrics show` / `dvc exp show`:
  `base.<task>.<metric>`, `adapter.<task>.<metric>`, `delta.<task>.<metric>` (adapter - base, not for
  standard errors) and `num_samples.<task>`. A metric of a filter other than lm-eval's `none` is named
  `<metric>_<filter>`.
- `reports/harness/`: `<model>/<task>.jsonl` (lm-eval's per-sample log: document, requests,
  responses, per-sample metrics), `results.json` (lm-eval's results, task configs, versions, n-shot) and
  `manifest.json` (the cache key and what went into it).

Results are kept in `eval.harness.cache_dir/<key>/`, the key hashing the adapter weights, the model
section, the task config (tasks, num_fewshot, limit, batch_size, the include_path files), lm-eval's version
and the device type: an unchanged combination restores its outputs without loading a model.

lm-eval is an optional dependency (`pip install 'peft-framework[eval]'`), imported only when tasks are set.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_framework.config.harness_schema import REPORT_PATH, SAMPLES_DIR, HarnessConfig
from peft_framework.config.schema import Config
from peft_framework.errors import ConfigError, StageFailed, UserError
from peft_framework.io import (
    atomic_dir,
    canonical_json_sha256,
    file_sha256,
    write_json_atomic,
    write_text_atomic,
)
from peft_framework.locking import locked_stage
from peft_framework.paths import resolve
from peft_framework.provenance import read_manifest, write_manifest

log = logging.getLogger(__name__)

MODELS = ("base", "adapter")
FORMAT = 1  # version of the outputs' layout: part of the cache key
REPORT = "report.json"  # the flat report, kept in a cache entry beside the samples
RESULTS = "results.json"


# ------------------------------------------------------------------------------------------- lm-eval
def _lm_eval_version() -> str:
    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "eval.harness.tasks: set, but lm-evaluation-harness is not installed; install it with "
            "pip install 'peft-framework[eval]', or set eval.harness.tasks: []"
        ) from None


#: lm-eval log lines this stage makes happen on purpose (a live model instead of a name, a task's own loader)
_EXPECTED_NOISE = ("`pretrained` model kwarg is not of type `str`", "Custom kwargs can be passed")


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in _EXPECTED_NOISE)


@contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval at WARNING, without the warnings this stage causes by design."""
    logger = logging.getLogger("lm_eval")
    level, drop = logger.level, _DropExpected()
    logger.setLevel(logging.WARNING)
    handlers = [logger, *logger.handlers, *logging.getLogger().handlers]
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)
        logger.setLevel(level)


def task_manager(cfg: HarnessConfig, root: str | os.PathLike[str]):
    """lm-eval's TaskManager for `cfg`. When every task is one of include_path's, lm-eval's ~15,000 built-in
    task files are not indexed (seconds saved); include_path tasks win over built-ins of the same name either
    way."""
    from lm_eval.tasks import TaskManager

    include = None
    if cfg.include_path is not None:
        include = resolve(root, cfg.include_path)
        if not include.is_dir():
            raise ConfigError(
                f"eval.harness.include_path: {str(include)!r} is not a directory; allowed: a directory of lm-eval "
                "task YAML files, or null"
            )
        local = TaskManager(include_path=str(include), include_defaults=False)
        if set(cfg.tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=str(include) if include else None)


def check_tasks(manager: Any, cfg: HarnessConfig) -> None:
    """Build every task once (lm-eval reads its data here): an unknown name, a task whose data is neither in
    the local datasets cache nor downloadable (offline), or a broken task file is an error naming the task."""
    for name in cfg.tasks:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            where = f" or in {cfg.include_path}" if cfg.include_path else ""
            raise ConfigError(
                f"eval.harness.tasks: {name!r} is not a task, group or tag of lm-eval {_lm_eval_version()}{where}"
                + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
            )
        try:
            manager.load([name])
        except Exception as exc:  # the task's own loader or datasets: whatever fails names this task
            offline = isinstance(exc, ConnectionError) or "offline" in str(exc).lower()
            if offline:
                raise UserError(
                    f"eval.harness.tasks: {name!r}: its data is not in the local HuggingFace datasets cache and "
                    f"cannot be downloaded here ({exc}); run it once with network access to cache it, or use a "
                    "local task (eval.harness.include_path)"
                ) from None
            raise UserError(
                f"eval.harness.tasks: {name!r} could not be loaded ({type(exc).__name__}: {exc})"
            ) from None


def run_lm_eval(lm: Any, manager: Any, cfg: HarnessConfig, seed: int) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on the wrapped model as it is now (adapter on or off)."""
    from lm_eval import evaluator

    results = evaluator.simple_evaluate(
        model=lm,
        tasks=list(cfg.tasks),
        num_fewshot=cfg.num_fewshot,
        limit=cfg.limit,
        batch_size=cfg.batch_size,
        task_manager=manager,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # only on a non-zero rank, which this stage never is
        raise StageFailed("eval.harness: lm-eval returned no results")
    return results


# -------------------------------------------------------------------------------------------- report
def _number(value: Any) -> float | None:
    """A finite number as float; None for anything else (lm-eval writes 'N/A' for a skipped stderr)."""
    if isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task or group: {metric: value}} from lm-eval's results ('acc,none' -> 'acc', 'acc,f' -> 'acc_f')."""
    out: dict[str, dict[str, float]] = {}
    for task, values in sorted(results.get("results", {}).items()):
        metrics: dict[str, float] = {}
        for key, value in values.items():
            if "," not in key:  # alias, samples, ...
                continue
            metric, filter_name = key.split(",", 1)
            number = _number(value)
            if number is not None:
                metrics[metric if filter_name == "none" else f"{metric}_{filter_name}"] = number
        out[task] = metrics
    return out


def flat_report(per_model: dict[str, dict[str, Any]]) -> dict[str, float | int]:
    """The numbers of both runs as flat keys (see the module docstring)."""
    metrics = {model: task_metrics(per_model[model]) for model in MODELS}
    report: dict[str, float | int] = {}
    for task, counts in sorted(per_model["adapter"].get("n-samples", {}).items()):
        report[f"num_samples.{task}"] = int(counts.get("effective", counts.get("original", 0)))
    for model in MODELS:
        for task, values in metrics[model].items():
            for metric, value in values.items():
                report[f"{model}.{task}.{metric}"] = value
    for task, values in metrics["adapter"].items():
        for metric, value in values.items():
            base = metrics["base"].get(task, {}).get(metric)
            if base is not None and "_stderr" not in metric:
                report[f"delta.{task}.{metric}"] = value - base
    return report


def _json_lines(rows: list[Any]) -> str:
    from lm_eval.utils import handle_non_serializable

    return "".join(
        json.dumps(row, default=handle_non_serializable, ensure_ascii=False, sort_keys=True) + "\n"
        for row in rows
    )


def _results_json(per_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from lm_eval.utils import handle_non_serializable

    kept = (
        "results",
        "groups",
        "group_subtasks",
        "configs",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
    )
    data = {model: {k: per_model[model][k] for k in kept if k in per_model[model]} for model in MODELS}
    return json.loads(json.dumps(data, default=handle_non_serializable))


# --------------------------------------------------------------------------------------------- cache
def cache_key(
    config: Config, root: str | os.PathLike[str], adapter_dir: Path, device_type: str
) -> dict[str, Any]:
    """What the harness numbers depend on; the cache key is its hash."""
    from peft_framework.adapters.checkpoint import CONFIG_NAME, WEIGHTS_NAME
    from peft_framework.config import section_hash

    cfg = config.eval.harness
    include = resolve(root, cfg.include_path) if cfg.include_path else None
    return {
        "format": FORMAT,
        "adapter_sha256": file_sha256(adapter_dir / WEIGHTS_NAME),
        "adapter_config_sha256": file_sha256(adapter_dir / CONFIG_NAME),
        "model": section_hash(config, "model"),
        "tasks": list(cfg.tasks),
        "num_fewshot": cfg.num_fewshot,
        "limit": cfg.limit,
        "batch_size": cfg.batch_size,
        "include_path_sha256": _tasks_sha256(include) if include is not None and include.is_dir() else None,
        "seed": config.train.seed,
        "lm_eval": _lm_eval_version(),
        "device": device_type,
    }


def _tasks_sha256(directory: Path) -> str:
    """Hash of the task files under `directory` (paths and contents); bytecode that importing a task's
    Python helpers leaves behind is not part of it."""
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return canonical_json_sha256([[p.relative_to(directory).as_posix(), file_sha256(p)] for p in files])


def _cached(cache_dir: Path, key: str) -> Path | None:
    entry = cache_dir / key
    if (entry / REPORT).is_file() and read_manifest(entry).get("key") == key:
        return entry
    return None


def _copy_tree(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        elif not item.name.startswith("."):  # the output marker is the destination's own
            shutil.copy2(item, dst / item.name)


# --------------------------------------------------------------------------------------------- stage
def _write_off(root: str | os.PathLike[str]) -> dict[str, Any]:
    samples_dir = resolve(root, SAMPLES_DIR)
    with atomic_dir(samples_dir, key="harness samples directory", root=root) as tmp:
        write_manifest(tmp, {"tasks": [], "note": "eval.harness.tasks is empty: nothing scored"})
    report_path = write_json_atomic(resolve(root, REPORT_PATH), {})
    return {"report_path": str(report_path), "samples_dir": str(samples_dir), "tasks": [], "metrics": {}}


def evaluate_models(config: Config, adapter_dir: Path, device, manager) -> dict[str, dict[str, Any]]:
    """lm-eval on the base model and on base + adapter: one model, the adapter injected once and switched
    off (the adapter type's `set_active(model, None)`) for the base run, on for the adapter run."""
    from lm_eval.models.huggingface import HFLM

    from peft_framework.adapters.checkpoint import DEFAULT_ADAPTER_NAME, load_adapter
    from peft_framework.models.loading import load_base_model
    from peft_framework.models.saved_tokenizer import adapter_tokenizer

    cfg = config.eval.harness
    tokenizer = adapter_tokenizer(config.model, adapter_dir)
    model = load_base_model(config.model, tokenizer=tokenizer)
    method, _ = load_adapter(model, adapter_dir)
    model.to(device).eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
    per_model: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        method.set_active(model, DEFAULT_ADAPTER_NAME if name == "adapter" else None)
        log.info(
            "lm-eval %s on the %s", ", ".join(cfg.tasks), "base model" if name == "base" else "base + adapter"
        )
        per_model[name] = run_lm_eval(lm, manager, cfg, config.train.seed)
    return per_model


@locked_stage("harness")
def harness(config: Config, root: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Score the base model and base + the trained adapter with lm-evaluation-harness (`eval.harness`);
    write the flat report and the per-sample logs. Returns a summary (paths, cache hit, the flat report)."""
    from peft_framework.adapters.checkpoint import CONFIG_NAME
    from peft_framework.runtime import pick_device

    cfg = config.eval.harness
    if not cfg.tasks:
        return _write_off(root)
    adapter_dir = resolve(root, config.train.output_dir)
    if not (adapter_dir / CONFIG_NAME).is_file():
        raise StageFailed(
            f"train.output_dir: {adapter_dir} holds no trained adapter ({CONFIG_NAME} missing); run the train stage first"
        )
    device = pick_device(config.eval.device, key="eval.device")
    material = cache_key(config, root, adapter_dir, device.type)
    key = canonical_json_sha256(material)
    cache_dir = resolve(root, cfg.cache_dir)
    samples_dir = resolve(root, SAMPLES_DIR)
    entry = _cached(cache_dir, key)
    if entry is not None:
        log.info("eval.harness: unchanged adapter and task config; results restored from %s", entry)
        report = json.loads((entry / REPORT).read_text(encoding="utf-8"))
        with atomic_dir(samples_dir, key="harness samples directory", root=root, inputs=[adapter_dir]) as tmp:
            _copy_tree(entry, tmp)
            (tmp / REPORT).unlink()
    else:
        with _quiet_lm_eval():
            manager = task_manager(cfg, root)
            check_tasks(manager, cfg)
            per_model = evaluate_models(config, adapter_dir, device, manager)
        report = flat_report(per_model)
        with atomic_dir(samples_dir, key="harness samples directory", root=root, inputs=[adapter_dir]) as tmp:
            for name in MODELS:
                for task, rows in sorted(per_model[name].get("samples", {}).items()):
                    write_text_atomic(tmp / name / f"{task}.jsonl", _json_lines(rows))
            write_json_atomic(tmp / RESULTS, _results_json(per_model))
            write_manifest(tmp, {"key": key, **material})
        with atomic_dir(
            cache_dir / key, key="eval.harness.cache_dir", root=root, inputs=[adapter_dir]
        ) as tmp:
            _copy_tree(samples_dir, tmp)
            write_json_atomic(tmp / REPORT, report)
    report_path = write_json_atomic(resolve(root, REPORT_PATH), report)
    log.info(
        "harness report: %s", ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float))
    )
    return {
        "report_path": str(report_path),
        "samples_dir": str(samples_dir),
        "tasks": list(cfg.tasks),
        "cached": entry is not None,
        "key": key,
        "adapter_sha256": material["adapter_sha256"],
        "metrics": report,
    }
