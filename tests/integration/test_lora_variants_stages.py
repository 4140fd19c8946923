"""DoRA, LoRA+, PiSSA and OLoRA through the stages on the built-in tiny Llama: train (from config alone),
resume after a SIGKILL to the uninterrupted run's adapter, the saved adapter loaded by HuggingFace peft on the ORIGINAL
base reproducing the reported validation loss, evaluate, export with the parity check, and switching between
variant adapters in one model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import peft
import pytest
import torch
from tests.integration.test_train import _pairs, base_eval_loss, write_prepared

from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, EvalConfig, ExportConfig, TrainConfig
from peft_framework.evaluation import evaluate
from peft_framework.export import export
from peft_framework.inference import MultiAdapterModel
from peft_framework.models.tiny import tiny_llama
from peft_framework.training import train
from peft_framework.training.checkpoints import list_checkpoints
from peft_framework.training.collator import PadCollator

pytestmark = pytest.mark.slow

VARIANTS: dict[str, tuple[dict, dict]] = {  # name: (adapter keys, train keys)
    "dora": ({"use_dora": True}, {}),
    "loraplus": ({}, {"loraplus_lr_ratio": 4.0}),
    "pissa": ({"init": "pissa_niter_2"}, {"learning_rate": 2e-3}),
    "olora": ({"init": "olora"}, {"learning_rate": 2e-3}),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variants_project")
    write_prepared(
        root / "data/prepared", {"train": _pairs(64, 1), "validation": _pairs(16, 2), "test": _pairs(8, 3)}
    )
    return root


def make_config(tag: str, adapter: dict, train_keys: dict) -> Config:
    train_cfg = dict(
        max_steps=8,
        batch_size=8,
        learning_rate=1e-2,
        logging_steps=2,
        save_steps=4,
        eval_steps=4,
        report_to="none",
        keep_checkpoints=True,
        output_dir=f"out/{tag}/adapter",
        checkpoint_dir=f"out/{tag}/ckpt",
        metrics_dir=f"out/{tag}/metrics",
    )
    train_cfg.update(train_keys)
    return Config(
        adapter=LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], **adapter}),
        train=TrainConfig(**train_cfg),
        eval=EvalConfig(
            report_path=f"out/{tag}/eval.json",
            predictions_path=f"out/{tag}/pred.jsonl",
            plots_dir=f"out/{tag}/plots",
            generate=False,
        ),
        export=ExportConfig(output_dir=f"out/{tag}/merged", report_path=f"out/{tag}/export.json"),
    )


@torch.no_grad()
def validation_loss(model: torch.nn.Module, root: Path) -> float:
    """Trainer's eval loss: per-batch token means (eval batch 8, in order), averaged over rows."""
    val = datasets.load_from_disk(str(root / "data/prepared"))["validation"].select_columns(
        ["input_ids", "attention_mask", "labels"]
    )
    losses = []
    for start in range(0, len(val), 8):
        rows = [val[i] for i in range(start, min(start + 8, len(val)))]
        losses += [float(model.eval()(**PadCollator(0)(rows)).loss)] * len(rows)
    return sum(losses) / len(losses)


_SUMMARIES: dict[str, dict] = {}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one CPU thread (the tiny model barely uses more), so that runs in other processes, such as
    the SIGKILLed ones, sum in the same order and can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained(project: Path, variant: str) -> tuple[Config, dict]:
    """The variant's config and train summary (trained once per module, on one thread)."""
    config = make_config(variant, *VARIANTS[variant])
    if variant not in _SUMMARIES:
        with one_thread():
            _SUMMARIES[variant] = train(config, project)
    return config, _SUMMARIES[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_and_loads_in_peft_on_the_original_base(project: Path, variant: str) -> None:
    config, summary = trained(project, variant)
    out = project / f"out/{variant}/adapter"
    assert summary["eval_loss"] < base_eval_loss(project)

    manifest = json.loads((out / "manifest.json").read_text())
    saved = json.loads((out / "adapter_config.json").read_text())
    assert manifest["adapter"]["use_dora"] == (variant == "dora") == saved["use_dora"]
    if variant in ("pissa", "olora"):
        assert saved["r"] == 8 and saved["init_lora_weights"] is True
        assert "ORIGINAL base" in manifest["adapter"]["saved_as"]
    groups = manifest["training"]["loraplus_groups"]
    if variant == "loraplus":
        assert groups["B"]["lr"] == pytest.approx(4 * groups["A"]["lr"]) and groups["B"]["tensors"] == 6
    else:
        assert groups is None

    # HuggingFace peft, on the unmodified base, computes the trained model's validation loss
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), out)
    assert validation_loss(loaded, project) == pytest.approx(summary["eval_loss"], abs=1e-5)


# ---------------------------------------------------------------------------------- SIGKILL and resume
# Runs of the real train stage, each in its own process, that SIGKILL themselves one step after
# checkpoint-4 (so that step's work is lost), as `kill -9` or an OOM kill would; the same config resumed
# must reach the uninterrupted run's adapter. What each variant adds to the state: DoRA its magnitudes,
# LoRA+ its two optimizer groups, PiSSA/OLoRA a residual base rebuilt from the original weights at start
# (the SVD/QR init must come out the same, never applied on top of an already-residual base) and the A₀, B₀
# the saved rank-2r adapter is converted with. One driver process imports the libraries once and forks
# a child per run (before torch has started any thread), which saves three imports of CI time.
KILL_DRIVER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config
from peft_framework.training import train

class KillAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:  # checkpoint-4 is complete, step 5 is done but not saved
            os.kill(os.getpid(), signal.SIGKILL)

children = {}
for path in sys.argv[2:]:
    raw = json.loads(open(path).read())
    raw["adapter"] = LoraConfig(**raw["adapter"])
    pid = os.fork()
    if pid == 0:
        train(Config.model_validate(raw), sys.argv[1], callbacks=[KillAfter()])
        os._exit(0)  # not killed: the parent reports exit 0
    children[pid] = path
ends = {}
for _ in children:
    pid, status = os.wait()
    ends[children[pid]] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
print("ENDS " + json.dumps(ends))
"""


def test_each_variant_resumes_after_sigkill_to_the_uninterrupted_adapter(project: Path) -> None:
    from tests.integration.test_train import _env, adapter_tensors, max_abs_diff

    from peft_framework.training.checkpoints import checkpoint_problems

    driver = project / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    configs = {v: make_config(f"{v}-kill", *VARIANTS[v]) for v in sorted(VARIANTS)}
    files = {}
    for variant, config in configs.items():
        files[variant] = project / f"{variant}-kill.json"
        files[variant].write_text(json.dumps(config.model_dump(mode="json", by_alias=True)))
    proc = subprocess.run(
        [sys.executable, str(driver), str(project), *map(str, files.values())],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "ENDS " in proc.stdout, proc.stderr[-3000:]
    ends = json.loads(proc.stdout.split("ENDS ", 1)[1])

    with one_thread():  # as the killed runs and the references: the same sums, bit for bit
        for variant, config in configs.items():
            assert ends[str(files[variant])] == -signal.SIGKILL, (variant, proc.stderr[-3000:])
            ckpt_dir = project / config.train.checkpoint_dir
            assert [c.step for c in list_checkpoints(ckpt_dir)] == [4], variant
            assert not checkpoint_problems(ckpt_dir / "checkpoint-4")
            assert not (project / config.train.output_dir).exists(), "a killed run leaves no adapter"

            resumed = train(config, project)
            assert resumed["resumed_from"] == str(ckpt_dir / "checkpoint-4")
            assert resumed["global_step"] == 8
            reference = adapter_tensors(project / trained(project, variant)[0].train.output_dir)
            assert max_abs_diff(adapter_tensors(project / config.train.output_dir), reference) == 0.0, variant


# LoRA+ changes only the optimizer: its adapter is a plain LoRA, evaluated and exported as one
@pytest.mark.parametrize("variant", ["dora", "pissa", "olora"])
def test_variant_evaluates_and_exports_with_parity(project: Path, variant: str) -> None:
    config, summary = trained(project, variant)
    metrics = evaluate(config, project)["metrics"]
    assert metrics["adapter.loss"] < metrics["base.loss"]
    exported = export(config, project)
    assert exported["merged"] and exported["parity_passed"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(project / config.export.output_dir)
    assert validation_loss(merged, project) == pytest.approx(summary["eval_loss"], abs=1e-4)


def test_switching_between_variant_adapters(project: Path) -> None:
    dirs = {v: project / f"out/{v}/adapter" for v in sorted(VARIANTS)}
    for v in dirs:
        trained(project, v)
    model = MultiAdapterModel.from_base("builtin:tiny-llama", device="cpu")
    for name, directory in dirs.items():
        model.load_adapter(name, directory)
    for name, directory in dirs.items():
        model.set_adapter(name)
        expected = validation_loss(peft.PeftModel.from_pretrained(tiny_llama(), directory), project)
        assert validation_loss(model.model, project) == pytest.approx(expected, abs=1e-5)
