"""Small hostile inputs must not become large memory or huge messages (case 4 of issue 18), and a huge
rejected row is not copied whole into rejected.jsonl (case 8)."""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import time
from pathlib import Path

import pytest
from faultkit import Run, new_project, write_raw

from peft_framework.errors import MAX_PROBLEMS

BOMB = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["train:", "  epochs: *i"]
)  # 9**9 = 387 million strings once expanded


def _validate(cli: Run, path: Path) -> tuple[int, str]:
    code, _, err = cli("validate", None, str(path))
    return code, err


def test_a_yaml_alias_bomb_is_refused_quickly_in_little_memory(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    code, err = _validate(cli, path)
    assert time.perf_counter() - started < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB
    assert code == 2 and err.startswith(f"error: {path}: the document holds more than 100000 values")
    assert len(err) < 1000


def test_a_huge_or_deep_config_gives_a_short_message(cli: Run, tmp_path: Path) -> None:
    many = tmp_path / "many.yaml"
    many.write_text("train:\n" + "".join(f"  key_{i}: {i}\n" for i in range(600_000)))
    code, err = _validate(cli, many)
    assert code == 2 and "a config file may be at most" in err and len(err) < 1000

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, err = _validate(cli, deep)
    assert code == 2 and err.startswith(f"error: {deep}: invalid JSON: nested too deeply")

    unknown = tmp_path / "unknown.yaml"  # within the limits, but thousands of problems
    unknown.write_text("train:\n" + "".join(f"  key_{i}: {i}\n" for i in range(5000)))
    code, err = _validate(cli, unknown)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 + MAX_PROBLEMS + 1
    assert lines[-1] == f"  ... and {5000 - MAX_PROBLEMS} more problem(s) not shown"


@pytest.mark.slow
@pytest.mark.parametrize("r", [10**12, 100_000])
def test_an_adapter_config_with_a_huge_rank_is_refused_before_allocating(
    cli: Run, trained: Path, tmp_path: Path, r: int
) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "models/adapter", adapter)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**saved, "r": r}))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = cli(
        "generate",
        None,
        "--base",
        "builtin:tiny-llama",
        "--adapter",
        f"a={adapter}",
        "--use",
        "a",
        "--prompt",
        "hi",
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB: no r-sized tensor
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"error: {adapter / 'adapter_model.safetensors'}: tensor shapes do not match")
    assert f"model ({r}, " in err or f", {r})" in err
    assert len(err) < 20_000


@pytest.mark.slow
def test_a_huge_rejected_row_is_kept_as_prefix_length_and_hash(cli: Run, tmp_path: Path) -> None:
    root = new_project(tmp_path / "p")
    raw = write_raw(root / "data" / "raw" / "instructions.jsonl")
    huge = {"instruction": "x" * 5_000_000}  # no output: rejected
    with raw.open("a", encoding="utf-8") as f:
        f.write(json.dumps(huge) + "\n")
    code, _, err = cli("prepare", root)
    assert code == 0, err
    rows = [json.loads(line) for line in (root / "data/rejected.jsonl").read_text().splitlines()]
    [row] = [r for r in rows if isinstance(r["raw"], dict) and r["raw"].get("truncated")]
    text = json.dumps(huge, ensure_ascii=False)
    assert row["raw"]["chars"] == len(text)
    assert row["raw"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert text.startswith(row["raw"]["prefix"]) and len(row["raw"]["prefix"]) == 4096
    assert (root / "data/rejected.jsonl").stat().st_size < 100_000
