"""Prefect artifacts from the stage reports: data report, eval table (base vs adapter), export parity.

Built from the report files on disk, so a stage that was a cache hit still shows its (intact) results.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from tasks.fingerprint import resolve

from peft_framework.config.schema import Config


def flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts as (dotted key, leaf value) pairs; lists stay leaves."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), data


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def markdown_table(title: str, report: dict[str, Any], source: str, headline: str = "") -> str:
    lines = [f"# {title}", "", *([headline, ""] if headline else []), f"From `{source}`.", ""]
    lines += ["| key | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in flatten(report)]
    return "\n".join(lines) + "\n"


def comparison_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Flat `base.X` / `adapter.X` / `delta.X` keys as one row per metric X; other keys as their own rows."""
    rows: dict[str, dict[str, str]] = {}
    for key, value in flatten(report):
        side, _, metric = key.partition(".")
        if side in ("base", "adapter", "delta") and metric:
            rows.setdefault(metric, {"metric": metric, "base": "", "adapter": "", "delta": ""})[side] = _fmt(
                value
            )
        else:
            rows.setdefault(key, {"metric": key, "base": "", "adapter": "", "delta": ""})["adapter"] = _fmt(
                value
            )
    return list(rows.values())


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"value": data}


def data_headline(report: dict[str, Any]) -> str:
    rows = report.get("rows")
    if not isinstance(rows, dict):
        return ""
    return (
        f"**{rows.get('read')}** rows read, **{rows.get('kept')}** kept, **{rows.get('rejected')}** rejected."
    )


def parity_headline(report: dict[str, Any]) -> str:
    if report.get("merged") is False:
        return f"**Not merged**: {report.get('reason')}; the adapter was exported as is."
    if "parity_passed" not in report:
        return ""
    verdict = "passed" if report["parity_passed"] else "FAILED"
    return (
        f"**Parity {verdict}**: merged model vs base + adapter, max abs logit difference "
        f"{_fmt(report.get('parity_max_abs_diff'))} (tolerance {_fmt(report.get('parity_atol'))}, "
        f"dtype {report.get('dtype')})."
    )


# The full reports sit in the stages' outputs (the metric files hold their numbers only).
DATA_DETAILS = "report.json"
EXPORT_DETAILS = "export_report.json"


def _data_report(config: Config, root: Path) -> None:
    rel = f"{config.data.output_dir.rstrip('/')}/{DATA_DETAILS}"
    if not resolve(root, rel).is_file():
        rel = config.data.report_path
    if (report := _load(resolve(root, rel))) is not None:
        create_markdown_artifact(
            markdown_table("Data report", report, rel, data_headline(report)),
            key="data-report",
            description="Rows read, kept, rejected",
        )


def _eval_table(config: Config, root: Path) -> None:
    rel = config.eval.report_path
    if (report := _load(resolve(root, rel))) is not None:
        create_table_artifact(
            comparison_rows(report), key="eval-base-vs-adapter", description=f"Base model vs adapter ({rel})"
        )


def _harness_table(config: Config, root: Path) -> None:
    from peft_framework.config.harness_schema import REPORT_PATH

    if report := _load(resolve(root, REPORT_PATH)):  # empty when eval.harness has no tasks
        create_table_artifact(
            comparison_rows(report),
            key="harness-base-vs-adapter",
            description=f"lm-evaluation-harness: base model vs adapter ({REPORT_PATH})",
        )


def _export_parity(config: Config, root: Path) -> None:
    rel = f"{config.export.output_dir.rstrip('/')}/{EXPORT_DETAILS}"
    if not resolve(root, rel).is_file():
        rel = config.export.report_path
    if (report := _load(resolve(root, rel))) is not None:
        create_markdown_artifact(
            markdown_table("Export and parity", report, rel, parity_headline(report)),
            key="export-parity",
            description="Merged model vs base + adapter",
        )


PUBLISHERS: dict[str, Callable[[Config, Path], None]] = {
    "prepare": _data_report,
    "evaluate": _eval_table,
    "harness": _harness_table,
    "export": _export_parity,
}


def publish(stage: str, config: Config, root: Path) -> None:
    """Create the artifact of `stage` (if it has one and its report exists) in the current flow run."""
    publisher = PUBLISHERS.get(stage)
    if publisher is None:
        return
    try:
        publisher(config, root)
    except Exception as exc:  # noqa: BLE001 - best-effort: the stage's outputs are written already
        print(
            f"warning: the {stage} artifact was not published to the Prefect API ({type(exc).__name__}: "
            f"{exc}); the stage's outputs are unaffected",
            file=sys.stderr,
            flush=True,
        )
