"""Promotion: register a git commit's adapter and merged model in the model registry (GTO) when its
reports meet `export.promote`.

    python -m tasks.promote                 # the committed results at HEAD
    python -m tasks.promote --ref exp-1a2b3 # a `dvc exp` run (its name or commit; see `dvc exp show`)

A registry version is a git commit, so everything is read from the commit itself (`git show REF:path`):
params.yaml, eval.report_path and export.report_path, never the work tree. The decision is
`peft_framework.export.promote.decide`; when it holds, `gto register` writes one annotated tag per
artifact declared in dvc.yaml `artifacts:` (`adapter@vX.Y.Z`, `merged-model@vX.Y.Z`), whose message
carries the config hash (sha256 of the resolved config). When it does not, nothing is registered and
the failed rules are printed with their numbers. Exit status: 0 registered (or already registered at
that commit), 1 not promoted, 2 a user error (no git repo, unknown ref, reports not committed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from peft_framework.config import config_hash, load_config
from peft_framework.errors import UserError
from peft_framework.export.promote import decide

ARTIFACTS = ("adapter", "merged-model")
"""The names dvc.yaml `artifacts:` declares for train.output_dir and export.output_dir."""


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout


def resolve_ref(root: Path, ref: str) -> str:
    """The commit sha of `ref`: a branch, tag, sha, or a `dvc exp` name (refs/exps/...)."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return proc.stdout.strip()
    exps = _git(root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines()
    for line in exps:
        name, sha = line.split()
        if name.rsplit("/", 1)[-1] == ref:
            return sha
    raise UserError(f"--ref: {ref!r} is neither a git revision nor a `dvc exp` name in {root}")


def _show(root: Path, sha: str, path: str, what: str) -> str:
    """The text of `path` as committed at `sha`; a UserError naming the file and the commit when it is
    missing or not UTF-8 (exit 1 is kept for "rules failed")."""
    proc = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=root, capture_output=True)
    if proc.returncode != 0:
        raise UserError(
            f"{what}: {path!r} is not committed at {sha[:10]}; commit the pipeline's results "
            "(dvc.lock, params.yaml and the reports) or promote a `dvc exp` run"
        )
    try:
        return proc.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what}: {path!r} at commit {sha[:10]} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _show_json(root: Path, sha: str, path: str, what: str) -> dict[str, Any]:
    """`_show` parsed as a JSON object (a report); a UserError naming the file and the commit otherwise."""
    text = _show(root, sha, path, what)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{what}: {path!r} at commit {sha[:10]} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(
            f"{what}: {path!r} at commit {sha[:10]} holds {type(data).__name__}, expected a JSON object"
        )
    return data


def decide_at(root: Path, sha: str, params: str = "params.yaml") -> dict[str, Any]:
    """The promotion decision for commit `sha`, plus that commit's config hash."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "params.yaml"
        cfg_file.write_text(_show(root, sha, params, "params"), encoding="utf-8")
        with warnings.catch_warnings():  # e.g. keys of other adapter types: `peft-framework check` says so
            warnings.simplefilter("ignore")
            try:
                config = load_config(cfg_file)
            except UserError as exc:  # its messages name the temporary copy: name the file and commit
                message = str(exc).replace(str(cfg_file), f"{params} at commit {sha[:10]}")
                raise UserError(message) from None
    rules = config.export.promote
    eval_report: dict[str, Any] = {}
    export_report: dict[str, Any] = {}
    if rules is not None:
        eval_report = _show_json(root, sha, config.eval.report_path, "eval.report_path")
        if rules.require_parity:
            export_report = _show_json(root, sha, config.export.report_path, "export.report_path")
    decision = decide(rules, eval_report, export_report)
    decision["config_sha256"] = config_hash(config)
    decision["commit"] = sha
    return decision


def register(root: Path, sha: str, decision: dict[str, Any]) -> list[str]:
    """`gto register` each artifact at `sha` (next patch version); returns the tags written."""
    from gto import api

    message = f"config_sha256={decision['config_sha256']}\n" + "\n".join(
        decision["reasons"]
    )  # the annotated tag's message
    tags = []
    for name in ARTIFACTS:
        existing = [t for t in _git(root, "tag", "--points-at", sha).split() if t.startswith(f"{name}@v")]
        if existing:
            tags.append(f"{existing[0]} (already registered at this commit)")
            continue
        tag = api.register(str(root), name, ref=sha, message=message)
        tags.append(tag.tag if hasattr(tag, "tag") else str(tag))
    return tags


def promote(root: str | Path = ".", ref: str = "HEAD", params: str = "params.yaml") -> dict[str, Any]:
    root = Path(root).resolve()
    sha = resolve_ref(root, ref)
    decision = decide_at(root, sha, params)
    decision["registered"] = register(root, sha, decision) if decision["promote"] else []
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD", help="commit, tag, branch or `dvc exp` name (default HEAD)")
    parser.add_argument("--root", default=".", help="the project (git repository) root")
    parser.add_argument("--params", default="params.yaml", help="config file, as committed")
    args = parser.parse_args(argv)
    try:
        result = promote(args.root, args.ref, args.params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    lines = [f"  {r}" for r in result["reasons"]]
    if not result["promote"]:
        print(f"not promoted: {result['commit'][:10]}; nothing registered", *lines, sep="\n", file=sys.stderr)
        return 1
    print(
        f"promoted {result['commit'][:10]} (config_sha256 {result['config_sha256'][:12]})", *lines, sep="\n"
    )
    print("registered: " + ", ".join(result["registered"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
