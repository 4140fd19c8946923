"""The `promote` stage of dvc.yaml: decide whether this run's adapter meets `export.promote`, register nothing.

    python -m tasks.promote_stage [--config params.yaml] [--metric reports/promote.json]
                                  [--manifest reports/promote_decision.json]

Reads the work tree's eval.report_path and export.report_path (the evaluate and export stages' outputs) and
writes the decision twice: `--metric`, numbers only for `dvc metrics show` / `dvc exp show` (`promote` 1/0
and the metric's `gain`), and `--manifest` with the rule-by-rule
reasons and the rules. Both exist also when promotion is off (`promote: 0`), so the stage's outputs
never vanish with a config change.

Registering the version (GTO git tags) stays an explicit command, `python -m tasks.promote`, which decides
again from a commit's reports: a `dvc repro` that created git tags would surprise (a tag is a release, and
`dvc exp run` workspaces are throwaway). Plain Python, not a Prefect flow: the decision reads two small
JSON files, cheaper than starting a flow run. Exit 0 whether or not the rules hold; 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from peft_framework.config import load_config_with_warnings
from peft_framework.config.schema import Config
from peft_framework.errors import UserError
from peft_framework.export.promote import decide
from peft_framework.io import write_json_atomic

METRIC = "reports/promote.json"
MANIFEST = "reports/promote_decision.json"


def _report(root: Path, rel: str, what: str) -> dict[str, Any]:
    path = root / rel
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what}: {rel} does not exist; run the pipeline first (dvc repro)") from None
    except ValueError as exc:
        raise UserError(f"{what}: {rel} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: {rel} must hold a JSON object")
    return data


def numbers(decision: dict[str, Any]) -> dict[str, float | int]:
    """The decision as a numbers-only metric: promote 1/0 and the metric check's gain. Two columns only:
    the threshold is a param (`dvc exp show` has it) and parity is in the export report."""
    out: dict[str, float | int] = {"promote": int(bool(decision["promote"]))}
    for check in decision["checks"]:
        if check["rule"] == "metric":
            out["gain"] = check["gain"]
    return out


def run(root: Path, config_path: str, metric: str, manifest: str) -> dict[str, Any]:
    config, _ = load_config_with_warnings(root / config_path)
    return gate(config, root, metric, manifest)


def gate(config: Config, root: Path, metric: str = METRIC, manifest: str = MANIFEST) -> dict[str, Any]:
    """Decide on `config`'s rules from the reports under `root`; write `metric` and `manifest` there. The
    dvc.yaml stage (`run`) and the Prefect pipeline flow (tasks.run.promote_gate) both come here."""
    rules = config.export.promote
    eval_report: dict[str, Any] = {}
    export_report: dict[str, Any] = {}
    if rules is not None:
        eval_report = _report(root, config.eval.report_path, "eval.report_path")
        if rules.require_parity:
            export_report = _report(root, config.export.report_path, "export.report_path")
    decision = decide(rules, eval_report, export_report)
    write_json_atomic(root / metric, numbers(decision))
    write_json_atomic(
        root / manifest,
        {
            **decision,
            "rules": rules.model_dump(mode="json") if rules is not None else None,
            "register": "python -m tasks.promote (after committing these results)",
        },
    )
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.promote_stage", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", default="params.yaml", help="experiment config (default: params.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root")
    parser.add_argument("--metric", default=METRIC, help=f"numbers-only decision (default {METRIC})")
    parser.add_argument("--manifest", default=MANIFEST, help=f"decision with reasons (default {MANIFEST})")
    args = parser.parse_args(argv)
    try:
        decision = run(args.root.resolve(), args.config, args.metric, args.manifest)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    verdict = "meets export.promote" if decision["promote"] else "does not meet export.promote"
    print(f"promote: this run {verdict}", *(f"  {r}" for r in decision["reasons"]), sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
