"""The train stage end to end on the built-in tiny Llama: outputs, determinism, resume, loss guard,
early stopping, SIGKILL + auto-resume, and DDP (torchrun, gloo) against one process.

Prepared data is built here directly in `prepare`'s output format (DatasetDict + manifest.json), so these
tests only exercise training.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, TrainConfig
from peft_framework.errors import StageFailed
from peft_framework.models.tiny import tiny_tokenizer
from peft_framework.training import train
from peft_framework.training.checkpoints import checkpoint_problems, list_checkpoints

WORDS = [
    "red",
    "blue",
    "green",
    "cat",
    "dog",
    "bird",
    "fish",
    "tree",
    "house",
    "river",
    "stone",
    "cloud",
    "rain",
    "sun",
    "moon",
    "star",
]
ADAPTER_FILE = "adapter_model.safetensors"


# ------------------------------------------------------------------------------------------ test data
def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word, times = rng.choice(WORDS), rng.randint(1, 4)
        out.append((f"Repeat {word} {times} times.\n", " ".join([word] * times)))
    return out


def write_prepared(data_dir: Path, splits: dict[str, list[tuple[str, str]]], mask_all: bool = False) -> Path:
    """A prepared causal-LM DatasetDict like `prepare` writes: labels -100 on the prompt, EOS appended
    (`mask_all`: every label -100, as when responses were truncated away)."""
    import datasets

    tok = tiny_tokenizer()
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "attention_mask": datasets.List(datasets.Value("int8")),
            "labels": datasets.List(datasets.Value("int32")),
            "prompt": datasets.Value("string"),
            "response": datasets.Value("string"),
        }
    )
    dd = {}
    for split, pairs in splits.items():
        cols: dict[str, list] = {name: [] for name in features}
        for prompt, response in pairs:
            p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
            r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            cols["input_ids"].append(p + r)
            cols["attention_mask"].append([1] * (len(p) + len(r)))
            cols["labels"].append([-100] * (len(p) + len(r)) if mask_all else [-100] * len(p) + r)
            cols["prompt"].append(prompt)
            cols["response"].append(response)
        dd[split] = datasets.Dataset.from_dict(cols, features=features)
    datasets.DatasetDict(dd).save_to_disk(str(data_dir))
    (data_dir / "manifest.json").write_text(json.dumps({"task": "causal_lm", "label_names": None}))
    return data_dir


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root with prepared data; each test writes its outputs under its own names."""
    root = tmp_path_factory.mktemp("train_project")
    write_prepared(
        root / "data/prepared", {"train": _pairs(64, 1), "validation": _pairs(16, 2), "test": _pairs(16, 3)}
    )
    return root


def make_config(tag: str, adapter: dict | None = None, **train: object) -> Config:
    defaults: dict[str, object] = dict(
        max_steps=12,
        batch_size=8,
        learning_rate=1e-2,
        logging_steps=2,
        save_steps=4,
        eval_steps=4,
        report_to="none",
        output_dir=f"out/{tag}/adapter",
        checkpoint_dir=f"out/{tag}/ckpt",
        metrics_dir=f"out/{tag}/metrics",
    )
    defaults.update(train)
    return Config(
        adapter=LoraConfig(
            **{"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], **(adapter or {})}
        ),
        train=TrainConfig(**defaults),
    )


def adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / ADAPTER_FILE))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def base_eval_loss(root: Path) -> float:
    """Held-out loss of the bare tiny Llama (no adapter) on the validation split."""
    import datasets

    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.collator import PadCollator

    ds = datasets.load_from_disk(str(root / "data/prepared"))["validation"].select_columns(
        ["input_ids", "attention_mask", "labels"]
    )
    batch = PadCollator(0)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        return float(tiny_llama()(**batch).loss)


# -------------------------------------------------------------------------------------- in-process tests
@pytest.mark.slow
def test_demo_lowers_held_out_loss_and_writes_a_complete_output(project: Path) -> None:
    config = make_config("demo", max_steps=24, report_to="dvclive")
    summary = train(config, project)
    out = project / "out/demo/adapter"

    before = base_eval_loss(project)
    assert summary["eval_loss"] < before - 2.0, (before, summary["eval_loss"])
    assert summary["global_step"] == 24 and summary["written"]

    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        ADAPTER_FILE,
        "manifest.json",
        "trainer_log.jsonl",
        "tokenizer.json",
    } <= names
    assert not [n for n in names if n.startswith("checkpoint-")]
    assert not (project / "out/demo/ckpt").exists(), "checkpoints are removed after a successful run"
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["task_type"] == "CAUSAL_LM"

    manifest = json.loads((out / "manifest.json").read_text())
    from peft_framework.config.hashing import config_hash
    from peft_framework.io import dir_sha256, file_sha256

    assert manifest["config_sha256"] == config_hash(config)
    assert manifest["config"]["train"]["max_steps"] == 24
    assert manifest["data"]["sha256"] == dir_sha256(project / "data/prepared")
    assert manifest["adapter"]["sha256"] == file_sha256(out / ADAPTER_FILE)
    assert manifest["seed"] == 42 and manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    params = manifest["parameters"]
    assert 0 < params["trainable"] < params["total"]
    assert manifest["training"]["global_step"] == 24
    assert manifest["training"]["eval_loss"] == pytest.approx(summary["eval_loss"])

    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in logs if "loss" in e]
    assert len(losses) >= 10 and losses[-1] < losses[0]

    # dvclive: the loss curve where `dvc plots show` finds it, stepped by optimizer step
    loss_tsv = (project / "out/demo/metrics/plots/metrics/loss.tsv").read_text().splitlines()
    assert loss_tsv[0].split("\t") == ["step", "loss"]
    assert [int(r.split("\t")[0]) for r in loss_tsv[1:]] == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert (project / "out/demo/metrics/plots/metrics/eval/loss.tsv").is_file()
    assert not (project / "dvc.yaml").exists(), "dvclive must not write a dvc.yaml"

    # the tokenizer saved with the adapter is the one trained with
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(str(out))("Repeat cat")["input_ids"]
        == tiny_tokenizer()("Repeat cat")["input_ids"]
    )


@pytest.mark.slow
def test_same_config_and_data_give_a_byte_identical_adapter(project: Path) -> None:
    a = train(make_config("det_a", adapter={"dropout": 0.1}, max_steps=8), project)
    b = train(make_config("det_b", adapter={"dropout": 0.1}, max_steps=8), project)
    bytes_a = (project / "out/det_a/adapter" / ADAPTER_FILE).read_bytes()
    bytes_b = (project / "out/det_b/adapter" / ADAPTER_FILE).read_bytes()
    assert a["adapter_sha256"] == b["adapter_sha256"]
    assert bytes_a == bytes_b
    # and a different seed gives a different adapter (the check above is not vacuous)
    c = train(make_config("det_c", adapter={"dropout": 0.1}, max_steps=8, seed=7), project)
    assert c["adapter_sha256"] != a["adapter_sha256"]


def _registered_types() -> list[str]:
    from peft_framework.adapters import registry

    return sorted(registry.all_methods())


@pytest.mark.slow
@pytest.mark.parametrize("adapter_type", _registered_types())
def test_every_registered_adapter_type_trains_and_reloads(project: Path, adapter_type: str) -> None:
    """Any registered type, with its default config, goes through the same loop (callbacks, extra loss),
    and the written adapter, loaded into a fresh base model, reproduces the reported validation loss."""
    import datasets

    from peft_framework.adapters import registry
    from peft_framework.adapters.checkpoint import load_adapter
    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.collator import PadCollator

    method = registry.get(adapter_type)
    config = make_config(f"type_{adapter_type}", max_steps=12, save_steps=6, eval_steps=6).model_copy(
        update={"adapter": method.config_class()}
    )
    summary = train(config, project)
    out = project / f"out/type_{adapter_type}/adapter"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapter"]["type"] == adapter_type
    assert summary["eval_loss"] < base_eval_loss(project)

    model = tiny_llama()
    load_adapter(model, out)
    # Trainer's eval loss: per-batch token means (eval batch 8, in order), averaged over rows
    val = datasets.load_from_disk(str(project / "data/prepared"))["validation"].select_columns(
        ["input_ids", "attention_mask", "labels"]
    )
    losses = []
    with torch.no_grad():
        for start in range(0, len(val), 8):
            rows = [val[i] for i in range(start, min(start + 8, len(val)))]
            losses += [float(model.eval()(**PadCollator(0)(rows)).loss)] * len(rows)
    assert sum(losses) / len(losses) == pytest.approx(summary["eval_loss"], abs=1e-5)


class StepCounter(TrainerCallback):
    """A callback with checkpointed state (the protocol AdapterTrainer offers, e.g. for rank allocators)."""

    def __init__(self) -> None:
        self.count = torch.zeros(1)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.count += 1

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {"count": self.count}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.count = state["count"].clone()


@pytest.mark.slow
def test_resume_auto_continues_only_the_same_run(project: Path) -> None:
    full = train(make_config("res_full", keep_checkpoints=True), project, callbacks=[StepCounter()])
    ckpt_dir = project / "out/res_full/ckpt"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [8, 12]  # save_total_limit 2
    assert all(not checkpoint_problems(c.path) for c in list_checkpoints(ckpt_dir))

    # Resume from checkpoint-8 with the same config: the same adapter as the uninterrupted run, and
    # callbacks that checkpoint tensors of their own get them back.
    shutil.rmtree(ckpt_dir / "checkpoint-12")
    counter = StepCounter()
    again = train(make_config("res_full", keep_checkpoints=True), project, callbacks=[counter])
    assert again["resumed_from"] == str(ckpt_dir / "checkpoint-8")
    assert again["adapter_sha256"] == full["adapter_sha256"]
    assert int(counter.count) == 12, "8 restored from the checkpoint + 4 after resuming"

    # Another learning rate makes those checkpoints someone else's: start fresh.
    other = train(make_config("res_full", learning_rate=1e-3), project)
    assert other["resumed_from"] is None
    assert other["adapter_sha256"] != full["adapter_sha256"]


@pytest.mark.slow
def test_adalora_resume_restores_the_rank_allocator(project: Path) -> None:
    """AdaLoRA's allocator state (importance averages, rank pattern) is checkpointed with the weights:
    resuming mid-budget or after the final mask gives the uninterrupted run's adapter."""
    from peft_framework.adapters import registry

    adalora = registry.get("adalora").config_class(init_r=6, target_r=2, tinit=2, tfinal=4, deltaT=2)

    def config() -> Config:
        return make_config(
            "ada", max_steps=16, save_steps=4, eval_steps=4, keep_checkpoints=True, save_total_limit=None
        ).model_copy(update={"adapter": adalora})

    full = train(config(), project)
    ckpt_dir = project / "out/ada/ckpt"
    assert (ckpt_dir / "checkpoint-8/callback_state/AdaLoraCallback.safetensors").is_file()
    for removed, resumed_at in (((16,), 12), ((16, 12), 8)):  # 12 = total_step - tfinal: the final mask
        for step in removed:
            shutil.rmtree(ckpt_dir / f"checkpoint-{step}")
        again = train(config(), project)
        assert again["resumed_from"] == str(ckpt_dir / f"checkpoint-{resumed_at}")
        assert again["adapter_sha256"] == full["adapter_sha256"], f"resumed at step {resumed_at}"


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(project: Path) -> None:
    class PoisonAfterStep3(TrainerCallback):
        """Writes inf into a LoRA weight after step 3, so step 4's loss is not finite."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("inf"))

    config = make_config("nan", save_steps=2, eval_steps=2)
    with pytest.raises(StageFailed, match=r"at step 4\b") as info:
        train(config, project, callbacks=[PoisonAfterStep3()])
    message = str(info.value)
    assert "checkpoint-2" in message and "learning_rate" in message
    ckpt_dir = project / "out/nan/ckpt"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [2]
    assert not checkpoint_problems(ckpt_dir / "checkpoint-2")
    assert not (project / "out/nan/adapter").exists()


@pytest.mark.slow
def test_rows_without_target_tokens_give_a_nan_loss_that_stops_the_run(tmp_path: Path) -> None:
    # every label masked (e.g. responses truncated away): the loss is 0/0 at the first step
    write_prepared(tmp_path / "data/prepared", {"train": _pairs(16, 5)}, mask_all=True)
    with pytest.raises(StageFailed, match=r"loss became nan at step 1 .*No checkpoint was saved"):
        train(make_config("nan_data"), tmp_path)


@pytest.mark.slow
def test_early_stopping_returns_the_best_adapter(tmp_path: Path) -> None:
    # training data that the validation data contradicts: validation loss rises once training bites
    train_pairs = [(f"Say {w}.\n", "yes yes yes") for w in WORDS] * 4
    val_pairs = [(f"Say {w}.\n", "no no no") for w in WORDS[:8]]
    write_prepared(tmp_path / "data/prepared", {"train": train_pairs, "validation": val_pairs})
    config = make_config(
        "early",
        max_steps=40,
        learning_rate=2e-2,
        eval_steps=2,
        save_steps=2,
        early_stopping_patience=2,
        keep_checkpoints=True,
        save_total_limit=1,
    )
    summary = train(config, tmp_path)
    manifest = json.loads((tmp_path / "out/early/adapter/manifest.json").read_text())
    training = manifest["training"]
    assert training["stopped_early"] and summary["global_step"] < 40
    best = training["best_checkpoint_step"]
    evals = {
        e["step"]: e["eval_loss"]
        for e in map(json.loads, (tmp_path / "out/early/adapter/trainer_log.jsonl").read_text().splitlines())
        if "eval_loss" in e
    }
    assert best == min(evals, key=evals.get)
    assert summary["eval_loss"] == pytest.approx(evals[best])
    # step checkpoints keep the trainable tensors under their in-memory names (LoRA: '.default.' inside)
    best_ckpt = load_file(str(tmp_path / f"out/early/ckpt/checkpoint-{best}/trainable_weights.safetensors"))
    as_peft = {"base_model.model." + k.replace(".default.", "."): v for k, v in best_ckpt.items()}
    assert max_abs_diff(as_peft, adapter_tensors(tmp_path / "out/early/adapter")) == 0.0


# ----------------------------------------------------------------------------------- subprocess tests
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from transformers import TrainerCallback
    from peft_framework.adapters.lora import LoraConfig
    from peft_framework.config.schema import Config
    from peft_framework.training import train

    raw = json.loads(open(sys.argv[1]).read())
    raw["adapter"] = LoraConfig(**raw["adapter"])
    config = Config.model_validate(raw)

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(float(sys.argv[3]))

    summary = train(config, sys.argv[2], callbacks=[Slow()] if float(sys.argv[3]) > 0 else [])
    print("SUMMARY " + json.dumps(summary))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _driver_files(root: Path, config: Config, name: str) -> tuple[Path, Path]:
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps(config.model_dump(mode="json", by_alias=True)))
    return driver, cfg


def _summary(stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith("SUMMARY "))
    return json.loads(line[len("SUMMARY ") :])


def _run(cmd: list[str], timeout: float = 300) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _summary(proc.stdout)


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(project: Path) -> None:
    adapter = {"dropout": 0.1}  # dropout draws from the RNG: resume must restore it too
    train_kw = dict(max_steps=14, save_steps=2, eval_steps=4, save_total_limit=2)
    reference = make_config("kill_ref", adapter=adapter, **train_kw)
    killed = make_config("kill", adapter=adapter, **train_kw)
    driver, ref_cfg = _driver_files(project, reference, "kill_ref")
    _, cfg = _driver_files(project, killed, "kill")

    ref = _run([sys.executable, str(driver), str(ref_cfg), str(project), "0"])

    ckpt_dir = project / "out/kill/ckpt"
    log_file = open(project / "kill.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(cfg), str(project), "0.4"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=_env(),
    )
    done: list = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = [c for c in list_checkpoints(ckpt_dir) if c.step >= 4 and not checkpoint_problems(c.path)]
            if done:
                break
            time.sleep(0.05)
        tail = (project / "kill.log").read_text(errors="replace")[-3000:]
        assert proc.poll() is None, f"the run ended before it could be killed:\n{tail}"
        assert done, "no checkpoint appeared"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log_file.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (project / "out/kill/adapter").exists(), "a killed run leaves no output"
    steps = [c.step for c in list_checkpoints(ckpt_dir)]
    assert steps and max(steps) < 14

    # a newer, half-written checkpoint (as a kill during saving leaves it) must be skipped
    last = list_checkpoints(ckpt_dir)[-1]
    partial = ckpt_dir / "checkpoint-13"
    shutil.copytree(last.path, partial)
    (partial / "trainer_state.json").unlink()
    with open(partial / "optimizer.pt", "r+b") as f:
        f.truncate(100)

    resumed = _run([sys.executable, str(driver), str(cfg), str(project), "0"])
    assert resumed["resumed_from"] is not None and not resumed["resumed_from"].endswith("checkpoint-13")
    assert resumed["global_step"] == ref["global_step"] == 14
    a = adapter_tensors(project / "out/kill_ref/adapter")
    b = adapter_tensors(project / "out/kill/adapter")
    diff = max_abs_diff(a, b)
    print(f"resume after SIGKILL at step {Path(resumed['resumed_from']).name}: max |diff| = {diff:.3g}")
    assert diff == 0.0


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_the_same_global_batch(project: Path) -> None:
    """The same config as `peft-framework train` in one process, and as the pipeline's train stage with
    train.devices 2, which starts the job under torchrun itself (DDP, gloo on CPU)."""
    from tasks.stages import STAGES

    common = dict(max_steps=10, save_steps=5, eval_steps=5)
    config = make_config("ddp1", batch_size=4, **common)
    (project / "ddp1.json").write_text(json.dumps(config.model_dump(mode="json", by_alias=True)))
    proc = subprocess.run(
        [sys.executable, "-m", "peft_framework", "train", str(project / "ddp1.json"), "--root", str(project)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = STAGES["train"].run(make_config("ddp2", batch_size=2, devices=2, **common), project)
    assert summary["world_size"] == 2 and "--standalone --nproc_per_node 2" in summary["launcher"]
    single = json.loads((project / "out/ddp1/adapter/manifest.json").read_text())["training"]
    double = json.loads((project / "out/ddp2/adapter/manifest.json").read_text())["training"]
    assert (single["world_size"], single["global_batch_size"]) == (1, 4)
    assert (double["world_size"], double["global_batch_size"]) == (2, 4)
    assert single["global_step"] == double["global_step"] == 10
    a = adapter_tensors(project / "out/ddp1/adapter")
    b = adapter_tensors(project / "out/ddp2/adapter")
    diff = max_abs_diff(a, b)
    scale = max(float(t.abs().max()) for t in a.values())
    print(
        f"DDP 2 processes vs 1 process: max |diff| = {diff:.3g} (max |weight| {scale:.3g}), "
        f"eval loss {single['eval_loss']:.6f} vs {double['eval_loss']:.6f}"
    )
    assert diff < 5e-5  # float summation order only; a wrong batch split or loss scaling is ~1e-2
    assert single["eval_loss"] == pytest.approx(double["eval_loss"], abs=1e-4)


@pytest.mark.slow
def test_bf16_weights_bf16_autocast_and_gradient_checkpointing_on_cpu(project: Path) -> None:
    from peft_framework.config.schema import ModelConfig

    config = make_config(
        "bf16", max_steps=6, save_steps=3, eval_steps=3, precision="bf16", gradient_checkpointing=True
    ).model_copy(update={"model": ModelConfig(dtype="bfloat16")})
    summary = train(config, project)
    training = json.loads((project / "out/bf16/adapter/manifest.json").read_text())["training"]
    assert training["precision"] == "bf16"
    assert summary["eval_loss"] < base_eval_loss(project) - 0.5
    tensors = adapter_tensors(project / "out/bf16/adapter")
    assert {t.dtype for t in tensors.values()} == {
        torch.float32
    }  # adapters of low-precision models stay fp32


@pytest.mark.slow
def test_compiled_training_matches_eager(project: Path) -> None:
    """train.compile: the same adapter as eager training up to float rounding (the fused LoRA autograd
    function runs under torch.compile too), saved in the same peft format."""
    steps = dict(max_steps=4, save_steps=4, eval_steps=4, learning_rate=1e-3)
    from torch._dynamo.utils import counters

    eager = train(make_config("eager", **steps), project)
    counters.clear()
    compiled = train(make_config("compiled", compile=True, **steps), project)
    assert counters["stats"]["unique_graphs"] > 0  # the model really ran compiled
    a = adapter_tensors(project / "out/eager/adapter")
    b = adapter_tensors(project / "out/compiled/adapter")
    assert max_abs_diff(a, b) < 1e-4
    assert abs(eager["train_loss"] - compiled["train_loss"]) < 1e-4
