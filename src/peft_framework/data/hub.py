"""Pin `hf:` data sources to a commit, read them at that commit, and record it (issue 15).

`data.source: hf:owner/name` reads the dataset's `main` branch; `hf:owner/name@REVISION` a branch, tag or
commit. A branch moves, so before reading, the revision is resolved to its commit (`models.hub.hub_commit`:
the Hub when reachable, otherwise the local HuggingFace cache's `refs/`), the dataset is read AT that commit,
and the commit enters the prepared data's hash and manifest (and the Prefect cache key of prepare): a branch
that moved re-runs prepare. Where nothing resolves it (offline and not cached), the commit is recorded as
null, a warning says so, and `datasets` loads what it can (its own cache, or a clear error).

Read from the cache, the dataset is loaded from the snapshot directory of that commit (`datasets` reads a
local directory like a Hub repo: README configs, data/ layout). Loading the repo id offline would not do:
`datasets` then skips the Hub cache and reloads the most recently built copy in its own Arrow cache
(HF_DATASETS_CACHE), whatever commit that was built from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_framework.errors import DataError

if TYPE_CHECKING:
    from peft_framework.data.sources import Source

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
_REPO_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def split_revision(entry: str) -> tuple[str, str | None]:
    """('owner/name', revision or None) of an `hf:owner/name[@REVISION]` entry. A local directory given
    as `hf:PATH` keeps its whole path (an '@' in it is no revision)."""
    name = entry[len(HF_PREFIX) :] if entry.startswith(HF_PREFIX) else entry
    repo, at, revision = name.partition("@")
    if not at or Path(name).exists():
        return name, None
    if not repo or not revision:
        raise DataError(
            f"data.source: {entry!r} names no {'revision' if repo else 'dataset'}; "
            "allowed: 'hf:owner/name' or 'hf:owner/name@REVISION' (a branch, tag or commit)"
        )
    return repo, revision


def is_hub_id(name: str) -> bool:
    """Whether `name` (after `hf:`) is a Hub repo id rather than a local dataset directory or file."""
    return _REPO_ID.fullmatch(name) is not None and not Path(name).exists()


def resolve_commit(name: str, revision: str | None):
    """`models.hub.hub_commit` of the dataset repo `name` at `revision`."""
    from peft_framework.models.hub import hub_commit

    return hub_commit(name, revision, repo_type="dataset")


def pin(sources: list[Source]) -> None:
    """Resolve the commit of every Hub dataset among `sources` (in `extra`: commit, snapshot, how)."""
    for src in sources:
        if src.format != "hf" or not is_hub_id(src.extra["name"]):
            continue
        name, revision = src.extra["name"], src.extra.get("revision")
        resolved = resolve_commit(name, revision)
        src.extra.update(commit=resolved.commit, snapshot=resolved.snapshot, how=resolved.how)
        if resolved.commit is None:
            log.warning(
                "data.source %r: cannot resolve revision %r of the HuggingFace dataset %r to a commit (%s); "
                "its commit is recorded as null and the data may not be what a later run reads",
                src.display,
                revision or "main",
                name,
                resolved.how,
            )
        else:
            log.info(
                "data.source %r: %s at commit %s (from the %s)",
                src.display,
                name,
                resolved.commit,
                resolved.how,
            )


def load_target(src: Source) -> tuple[str, str | None]:
    """(path, revision) to give `datasets.load_dataset` for an `hf:` source: the cached snapshot directory
    of its commit, or the repo id at its commit (resolved by the Hub), or as given (unresolved)."""
    snapshot, commit = src.extra.get("snapshot"), src.extra.get("commit")
    if snapshot is not None:
        return str(snapshot), None
    if commit is not None:
        return src.extra["name"], commit
    return src.extra["name"], src.extra.get("revision")


def _pinned(sources: list[Source]) -> list[Source]:
    return [s for s in sources if s.format == "hf" and "how" in s.extra]


def hash_content(sources: list[Source]) -> dict[str, Any]:
    """What enters the prepared data's hash for Hub datasets: {display: commit}; {} when there are none."""
    pinned = _pinned(sources)
    return {"hub_dataset_commits": {s.display: s.extra["commit"] for s in pinned}} if pinned else {}


def manifest_entries(sources: list[Source]) -> dict[str, Any]:
    """The manifest's `hub_datasets`: {display: {repo, revision, commit}}; {} when there are none (so the
    manifests of local data stay as they were)."""
    pinned = _pinned(sources)
    if not pinned:
        return {}
    return {
        "hub_datasets": {
            s.display: {
                "repo": s.extra["name"],
                "revision": s.extra.get("revision"),
                "commit": s.extra["commit"],
            }
            for s in pinned
        }
    }


def add_to_report(report: dict[str, Any], sources: list[Source]) -> None:
    """The commit of each Hub dataset beside its entry in the full report, and a warning for each that
    did not resolve."""
    by_display = {s.display: s for s in _pinned(sources)}
    for entry in report["sources"]:
        src = by_display.get(entry["path"])
        if src is not None:
            entry.update(revision=src.extra.get("revision"), commit=src.extra["commit"])
            if src.extra["commit"] is None:
                report["warnings"].append(
                    f"data.source {src.display!r}: commit unknown ({src.extra['how']}); recorded as null"
                )


def entry_commits(entries: list[str]) -> dict[str, str | None]:
    """{entry: commit} of the Hub dataset entries of `data.source` (for the prepare stage's cache key)."""
    out: dict[str, str | None] = {}
    for entry in entries:
        if not entry.startswith(HF_PREFIX):
            continue
        try:
            name, revision = split_revision(entry)
        except DataError:  # malformed: prepare itself says so
            continue
        if is_hub_id(name):
            out[entry] = resolve_commit(name, revision).commit
    return out
