"""Which commit of a HuggingFace Hub repo (model or dataset) a branch, tag or commit names, for cache keys.

A hub branch moves: a cache keyed on `main` would go on serving what `main` was. So a revision is resolved
to its commit: from the Hub when it is reachable, otherwise from the local HuggingFace cache, whose
`refs/<revision>` files hold the commit last downloaded for each branch or tag (`snapshots/<commit>/` holds
its files). huggingface_hub is imported only when a hub id is resolved.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE, read by huggingface_hub) or HF_DATASETS_OFFLINE is set."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in _TRUE


def hub_snapshot(
    repo_id: str,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None = None,
    repo_type: str = "model",
):
    """(snapshot directory, commit) of `repo_id` at `revision` (branch, tag or commit; None: main) in the
    local HuggingFace cache, or None when it is not cached. Offline: a branch resolves through the cache's
    refs/ to the commit last downloaded for it."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True, repo_type=repo_type
            )
        )
    except Exception as exc:  # noqa: BLE001 - not cached, not a repo id, or an unreadable cache: no snapshot
        # IncompleteSnapshotError: cached, but missing files the cached tree listing names (a partial download,
        # e.g. one config of a dataset): its commit is known all the same
        partial = getattr(exc, "snapshot_path", None)
        if partial is None:
            return None
        path = Path(partial)
    return path, path.name


def _record_ref(repo_id: str, revision: str | None, repo_type: str, cache_dir) -> None:
    """Have huggingface_hub record `refs/<revision>` -> commit in the cache, so that a later offline run
    resolves the same branch: it does so on any download by branch, even of a file the repo lacks (as
    `datasets` does, we ask for the repo card). Reading by commit (what is pinned) records no branch."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=revision, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - no card (the ref is recorded all the same) or gone meanwhile
        pass


@dataclass(frozen=True)
class HubCommit:
    """What a revision resolved to: `commit` (None: unresolved), `snapshot` (the cached snapshot directory
    holding that commit, when it came from the cache) and `how` ('hub', 'cache', or why it is unresolved)."""

    commit: str | None
    snapshot: Path | None
    how: str


def hub_commit(
    repo_id: str,
    revision: str | None,
    repo_type: str = "model",
    cache_dir: str | os.PathLike[str] | None = None,
) -> HubCommit:
    """The commit `revision` (None: main) of `repo_id` names: asked of the Hub unless offline; when the Hub
    is offline, unreachable or refuses, the commit of the cached snapshot for that revision."""
    reason = "offline"
    if not hub_offline():
        from huggingface_hub import HfApi

        try:
            info = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=30)
            if info.sha:
                if revision != info.sha:
                    _record_ref(repo_id, revision, repo_type, cache_dir)
                return HubCommit(info.sha, None, "hub")
            reason = "the Hub gave no commit"
        except Exception as exc:  # noqa: BLE001 - unreachable, unknown repo or revision, no access: try the cache
            reason = f"the Hub did not answer ({type(exc).__name__}: {exc})"
    snapshot = hub_snapshot(repo_id, revision, cache_dir, repo_type)
    if snapshot is not None:
        if reason != "offline":
            log.info("%s %s: %s; using the cached snapshot %s", repo_type, repo_id, reason, snapshot[1])
        return HubCommit(snapshot[1], snapshot[0], "cache")
    return HubCommit(None, None, f"{reason}, and not in the local HuggingFace cache")
