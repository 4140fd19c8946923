"""`hf:` datasets pinned to a commit (issue 15): resolved through a real HuggingFace cache directory.

The Hub is not reachable in tests (conftest sets HF_HUB_OFFLINE), so revisions resolve through the cache:
each test builds the cache's real on-disk layout in tmp_path (`datasets--owner--name/` with `refs/<branch>`
holding a commit, `snapshots/<commit>/` whose files link to `blobs/`), the layout huggingface_hub writes,
and points huggingface_hub (HF_HUB_CACHE) and datasets (HF_DATASETS_CACHE, its Arrow cache) at tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from tasks.cache import key_material
from tasks.stages import STAGES

from peft_framework import cli
from peft_framework.config.schema import Config
from peft_framework.data import hub, prepare
from peft_framework.data.sources import read_source, resolve_sources
from peft_framework.errors import DataError
from peft_framework.models.hub import hub_commit

REPO = "acme/tiny-instructions"
LORA = Path(__file__).resolve().parents[2] / "params" / "lora.yaml"
REPO_DIR = "datasets--acme--tiny-instructions"


def rows(tag: str, n: int = 12) -> list[dict[str, str]]:
    return [{"instruction": f"Say {tag} {i}.", "output": f"{tag} {i}"} for i in range(n)]


def add_snapshot(cache: Path, data: list[dict[str, str]], branch: str = "main") -> str:
    """Write one commit of the dataset repo into the hub cache as huggingface_hub does; `branch` -> it."""
    blob = "".join(json.dumps(r) + "\n" for r in data).encode()
    commit = hashlib.sha1(blob).hexdigest()  # 40 hex digits, like a git commit
    repo = cache / REPO_DIR
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    folder = repo / "snapshots" / commit / "data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").symlink_to(
        os.path.relpath(repo / "blobs" / hashlib.sha256(blob).hexdigest(), folder)
    )
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return commit


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HuggingFace hub cache in tmp_path, offline (as HF_HUB_CACHE / HF_HUB_OFFLINE set it)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def config(source: str) -> Config:
    return Config.model_validate({"data": {"source": source, "split": {"validation": 0.0, "test": 0.0}}})


def prepared_rows(root: Path) -> list[str]:
    import datasets

    train = datasets.load_from_disk(str(root / "data" / "prepared"))["train"]
    return sorted(train["source"])


def manifest(root: Path) -> dict:
    return json.loads((root / "data" / "prepared" / "manifest.json").read_text())


def test_split_revision() -> None:
    assert hub.split_revision("hf:acme/x") == ("acme/x", None)
    assert hub.split_revision("hf:acme/x@v1.0") == ("acme/x", "v1.0")
    assert hub.split_revision("hf:acme/x@refs/pr/3") == ("acme/x", "refs/pr/3")
    with pytest.raises(DataError, match=r"data.source: 'hf:acme/x@' names no revision"):
        hub.split_revision("hf:acme/x@")
    assert hub.is_hub_id("acme/x") and not hub.is_hub_id("/abs/dir") and not hub.is_hub_id("a/b/c")


def test_branch_and_tag_resolve_to_the_cached_commit(cache: Path) -> None:
    first = add_snapshot(cache, rows("one"))
    tagged = add_snapshot(cache, rows("two"), branch="v2")
    resolved = hub_commit(REPO, None, repo_type="dataset")
    assert resolved.commit == (cache / REPO_DIR / "refs" / "main").read_text() == first
    assert resolved.how == "cache" and resolved.snapshot == cache / REPO_DIR / "snapshots" / first
    assert hub_commit(REPO, "v2", repo_type="dataset").commit == tagged
    assert hub_commit(REPO, first, repo_type="dataset").commit == first  # a commit names itself
    missing = hub_commit("acme/not-cached", None, repo_type="dataset")
    assert missing.commit is None and "not in the local HuggingFace cache" in missing.how


def test_a_partial_snapshot_still_resolves(cache: Path, tmp_path: Path) -> None:
    """A snapshot downloaded in part (the cached tree listing names files it lacks) still has its commit."""
    commit = add_snapshot(cache, rows("old"))
    listing = {"format_version": 1, "files": {"data/train.jsonl": {"size": 1, "blob_id": "0" * 40}}}
    listing["files"]["data/other.jsonl"] = {"size": 1, "blob_id": "1" * 40}  # not downloaded
    (cache / REPO_DIR / "trees").mkdir()
    (cache / REPO_DIR / "trees" / f"{commit}.json").write_text(json.dumps(listing))
    assert hub_commit(REPO, None, repo_type="dataset").commit == commit
    sources = resolve_sources(f"hf:{REPO}", "auto", tmp_path)
    hub.pin(sources)
    assert [r.data for r in read_source(sources[0])] == rows("old")


def test_reading_hf_source_reads_the_pinned_snapshot(cache: Path, tmp_path: Path) -> None:
    add_snapshot(cache, rows("old"))
    add_snapshot(cache, rows("new", 3), branch="v2")
    for source, want in ((f"hf:{REPO}", rows("old")), (f"hf:{REPO}@v2", rows("new", 3))):
        sources = resolve_sources(source, "auto", tmp_path)
        hub.pin(sources)
        assert [r.data for r in read_source(sources[0])] == want


def test_prepare_records_the_commit_and_a_moved_branch_changes_the_hash(cache: Path, tmp_path: Path) -> None:
    first = add_snapshot(cache, rows("old"))
    cfg = config(f"hf:{REPO}")
    key_before = key_material(STAGES["prepare"], cfg, tmp_path)
    assert key_before["data_commits"] == {f"hf:{REPO}": first}
    prepare(cfg, tmp_path)
    before = manifest(tmp_path)
    assert before["hub_datasets"] == {f"hf:{REPO}": {"repo": REPO, "revision": None, "commit": first}}
    report = json.loads((tmp_path / "data" / "prepared" / "report.json").read_text())
    assert report["sources"][0]["commit"] == first
    assert len(prepared_rows(tmp_path)) == 12

    # the branch moves to a new commit with other data: a new cache key, data hash, and the new rows
    second = add_snapshot(cache, rows("new", 5))
    assert key_material(STAGES["prepare"], cfg, tmp_path)["data_commits"] == {f"hf:{REPO}": second}
    prepare(cfg, tmp_path)
    after = manifest(tmp_path)
    assert after["hub_datasets"][f"hf:{REPO}"]["commit"] == second
    assert after["config_sha256"] != before["config_sha256"]
    assert len(prepared_rows(tmp_path)) == 5


def test_local_data_gains_no_hub_keys(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "train.jsonl").write_text(json.dumps(rows("x")[0]) + "\n")
    for source in ("local", f"hf:{tmp_path / 'local'}"):  # a file, and a local directory read by datasets
        sources = resolve_sources(source, "auto", tmp_path)
        hub.pin(sources)
        assert hub.manifest_entries(sources) == {} and hub.hash_content(sources) == {}
    assert "data_commits" not in key_material(STAGES["prepare"], Config(), tmp_path)


def test_uncached_dataset_offline_is_a_clear_error(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    add_snapshot(cache, rows("old"))  # another repo is cached; this one is not
    with caplog.at_level(logging.WARNING, logger="peft_framework.data.hub"):
        code = cli.main(["prepare", str(LORA), "--root", str(tmp_path), "data.source=hf:acme/not-cached@dev"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: data.source: cannot load HuggingFace dataset 'acme/not-cached' at 'dev'")
    assert "commit unknown: offline, and not in the local HuggingFace cache" in err
    assert "Traceback" not in err
    assert "cannot resolve revision 'dev'" in caplog.text


def test_weighted_entry_at_a_tag_is_pinned_and_sampled(cache: Path, tmp_path: Path) -> None:
    add_snapshot(cache, rows("main"))
    tagged = add_snapshot(cache, rows("tag", 4), branch="v2")
    (tmp_path / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows("local", 2)))
    source = [{"path": f"hf:{REPO}@v2", "count": 6}, "local.jsonl"]
    cfg = Config.model_validate({"data": {"source": source, "split": {"validation": 0.0, "test": 0.0}}})
    prepare(cfg, tmp_path)
    assert manifest(tmp_path)["hub_datasets"] == {
        f"hf:{REPO}@v2": {"repo": REPO, "revision": "v2", "commit": tagged}
    }
    taken = prepared_rows(tmp_path)
    assert len(taken) == 8 and sum(s.startswith(f"hf:{REPO}@v2#") for s in taken) == 6
