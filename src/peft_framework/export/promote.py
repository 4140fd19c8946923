"""The promotion gate: do an evaluation and an export report meet `export.promote`'s rules?

Pure decision from the numbers-only metric files (eval.report_path: `base.<m>`, `adapter.<m>`;
export.report_path: `merged`, then `parity_passed` for a merged export or `load_check_passed` for an
unmerged one, e.g. a bottleneck adapter, which has no merge to compare); registering the version is the pipeline layer's job
(tasks/promote.py, GTO), so this module imports neither GTO nor DVC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peft_framework.config.schema import PromoteConfig
from peft_framework.errors import UserError


def _number(report: Mapping[str, Any], key: str, where: str) -> float:
    value = report.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        have = sorted(k.split(".", 1)[1] for k in report if k.startswith("adapter."))
        raise UserError(
            f"export.promote.metric: {where} has no number {key!r}; allowed metrics there: "
            f"{', '.join(have) or '(none)'}"
        )
    return float(value)


def export_check(export_report: Mapping[str, Any]) -> dict[str, Any]:
    """The export's own check: parity of merged vs base + adapter where a merge exists, else the unmerged
    export's load check (loaded back as a user does, against base + adapter)."""
    merged = export_report.get("merged")
    prefix, label = (
        ("load_check", "unmerged export load check")
        if merged is not None and not merged
        else (
            "parity",
            "export parity",
        )
    )
    value = export_report.get(f"{prefix}_passed")
    passed = value is not None and bool(value)
    detail = (
        f"{label}: no {prefix}_passed in the export report"
        if value is None
        else f"{label}: {'passed' if passed else 'failed'} (max |diff| "
        f"{export_report.get(f'{prefix}_max_abs_diff')} vs atol {export_report.get(f'{prefix}_atol')})"
    )
    return {"rule": prefix, "passed": passed, "detail": detail}


def decide(
    rules: PromoteConfig | None, eval_report: Mapping[str, Any], export_report: Mapping[str, Any]
) -> dict[str, Any]:
    """{'promote': bool, 'reasons': [...], 'checks': [...]}: every rule with its numbers and verdict.

    `reasons` says, one line per rule, why the adapter was (or was not) promoted. Rules off (None) never
    promote. A metric missing from the eval report is a config error (UserError naming what is there).
    """
    if rules is None:
        return {"promote": False, "reasons": ["export.promote is null: promotion is off"], "checks": []}
    base = _number(eval_report, f"base.{rules.metric}", "the eval report")
    adapter = _number(eval_report, f"adapter.{rules.metric}", "the eval report")
    gain = base - adapter if rules.lower_is_better else adapter - base
    better = "lower" if rules.lower_is_better else "higher"
    checks: list[dict[str, Any]] = [
        {
            "rule": "metric",
            "passed": gain >= rules.min_delta,
            "detail": f"{rules.metric} ({better} is better): adapter {adapter:.6g} vs base {base:.6g}, "
            f"gain {gain:.6g} {'>=' if gain >= rules.min_delta else '<'} min_delta {rules.min_delta:g}",
            "base": base,
            "adapter": adapter,
            "gain": gain,
        }
    ]
    if rules.require_parity:
        checks.append(export_check(export_report))
    ok = all(c["passed"] for c in checks)
    reasons = [f"{'ok' if c['passed'] else 'FAILED'}: {c['detail']}" for c in checks]
    return {"promote": ok, "reasons": reasons, "checks": checks}
