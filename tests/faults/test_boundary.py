"""Foreseeable failures end as `error: <path>: <what>` and exit 2, never a traceback (case 5 of issue 18);
real bugs keep theirs."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
from faultkit import Run

from peft_framework.failures import describe_failure

ADAPTER = "models/adapter"


def _generate(cli: Run, *args: str) -> tuple[int, str, str]:
    return cli("generate", None, "--prompt", "hi", "--max-new-tokens", "1", *args)


def _adapter_copy(trained: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "adapter"
    shutil.copytree(trained / ADAPTER, dest)
    return dest


def _one_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1] if "\n  - " not in err else err.strip()
    assert "error: " in err
    for fragment in fragments:
        assert fragment in err, err
    return line


@pytest.mark.slow
def test_export_of_a_truncated_adapter(cli: Run, project_copy: Path) -> None:
    weights = project_copy / ADAPTER / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    code, _, err = cli("export", project_copy)
    _one_error(code, err, f"error: {weights}: truncated")
    assert not (project_copy / "models" / "merged").exists()


@pytest.mark.slow
def test_export_of_an_adapter_saved_only_as_pickle(cli: Run, project_copy: Path) -> None:
    weights = project_copy / ADAPTER / "adapter_model.safetensors"
    weights.rename(weights.with_name("adapter_model.bin"))
    code, _, err = cli("export", project_copy)
    _one_error(code, err, f"error: {weights}: missing (a pickle checkpoint is there; it is never loaded")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "what"),
    [(b"\xff\xfe{}", "not UTF-8 text"), (b"[" * 100_000 + b"]" * 100_000, "nested too deeply")],
)
def test_a_hostile_adapter_config(cli: Run, trained: Path, tmp_path: Path, content: bytes, what: str) -> None:
    adapter = _adapter_copy(trained, tmp_path)
    (adapter / "adapter_config.json").write_bytes(content)
    code, _, err = _generate(cli, "--base", "builtin:tiny-llama", "--adapter", f"a={adapter}", "--use", "a")
    _one_error(code, err, f"error: {adapter / 'adapter_config.json'}: {what}")


def _model_dir(tmp_path: Path) -> Path:
    from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

    path = tmp_path / "base"
    tiny_llama().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_a_model_dir_with_a_wrong_typed_config_or_truncated_weights(cli: Run, tmp_path: Path) -> None:
    base = _model_dir(tmp_path)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "num_hidden_layers": "two"}))
    code, _, err = _generate(cli, "--base", str(base))
    _one_error(code, err, f"model.name_or_path: {base}: cannot load", "num_hidden_layers")

    (base / "config.json").write_text(json.dumps(config))
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4000])
    code, _, err = _generate(cli, "--base", str(base))
    _one_error(code, err, f"model.name_or_path: {base}: cannot load the causal_lm model", "SafetensorError")


@pytest.mark.slow
def test_resuming_from_a_named_corrupt_checkpoint(cli: Run, project_copy: Path) -> None:
    ckpt = project_copy / "models/checkpoints/checkpoint-3"
    optimizer = ckpt / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-200])  # cut short: no central directory
    code, _, err = cli("train", project_copy, f"train.resume={ckpt}")
    _one_error(code, err, "error: train.resume:", "optimizer.pt incomplete or corrupt")


@pytest.mark.slow
def test_disk_full_during_prepare_keeps_the_old_output(
    cli: Run, project_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    prepared = project_copy / "data" / "prepared"
    before = sorted(p.name for p in prepared.iterdir())

    def full(self, path, *args, **kwargs):  # noqa: ANN001 - DatasetDict.save_to_disk's signature
        Path(path, "train").mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path, "train", "data-00000.arrow")))

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full)
    code, _, err = cli("prepare", project_copy)
    line = _one_error(code, err, "no space left on device")
    assert line.startswith(f"error: {prepared.parent}/.prepared.tmp-") and "data-00000.arrow" in line
    assert sorted(p.name for p in prepared.iterdir()) == before, "the previous output is untouched"
    assert sorted(p.name for p in prepared.parent.iterdir()) == ["prepared", "raw", "rejected.jsonl"]


def test_a_real_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import peft_framework.data
    from peft_framework.cli import main

    def buggy(config, root="."):  # noqa: ANN001, ANN202
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(peft_framework.data, "prepare", buggy)
    with pytest.raises(TypeError):
        main(["prepare", str(Path(__file__).parents[2] / "params.yaml"), "--root", str(tmp_path)])


def test_the_path_of_a_corrupt_file_is_named(tmp_path: Path) -> None:
    from safetensors import safe_open

    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")

    def read(path: Path) -> None:  # as the framework's readers call it: the path in a local variable
        safe_open(str(path), framework="pt")

    with pytest.raises(Exception) as info:
        read(bad)
    assert describe_failure(info.value).startswith(f"{bad}: not a readable safetensors file")
    assert describe_failure(OSError(errno.ENOSPC, "No space left on device", "/x/y")).startswith(
        "/x/y: no space left on device"
    )
    assert describe_failure(KeyError("bug")) is None
