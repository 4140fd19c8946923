"""`model.add_tokens` through the real stages, on a local model directory whose tokenizer lacks the shipped
chatml template's `<|im_start|>`/`<|im_end|>`: prepare formats with them as single tokens, train grows the
embeddings and trains those rows (saved in peft's trainable-tokens format, which peft loads onto a base
resized to the saved tokenizer), evaluate scores the adapter, export merges into a grown checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_framework.adapters import load_adapter
from peft_framework.cli import main
from peft_framework.config import load_config
from peft_framework.data import prepare
from peft_framework.evaluation.stage import evaluate
from peft_framework.export import export
from peft_framework.models.loading import load_base_model, resolve_model_path
from peft_framework.models.tiny import tiny_llama, tiny_tokenizer
from peft_framework.training.stage import train

pytestmark = pytest.mark.slow

TOKENS = ["<|im_start|>", "<|im_end|>"]
CONFIG = {
    "model": {"name_or_path": "base-model", "add_tokens": TOKENS},
    "data": {"source": "raw.jsonl", "chat_template": "chatml", "split": {"validation": 0.0, "test": 0.25}},
    "adapter": {"type": "lora", "r": 2, "target_modules": ["q_proj", "v_proj"]},
    "train": {"max_steps": 4, "batch_size": 4, "save_steps": 4, "learning_rate": 0.05, "report_to": "none"},
    "eval": {"generate": False, "max_samples": 4},
}


def prompt_ids(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say 3"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 259 in ids  # the prompt uses a new token
    return torch.tensor([ids])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("added_tokens_project")
    torch.manual_seed(0)
    tiny_llama().save_pretrained(root / "base-model")  # a real local model directory (259 tokens)
    tiny_tokenizer().save_pretrained(root / "base-model")
    rows = [{"instruction": f"Say {i}", "output": f"{i} {i}"} for i in range(16)]
    (root / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "params.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


@pytest.fixture(scope="module")
def trained(project: Path) -> dict:
    config = load_config(project / "params.yaml")
    prepared = prepare(config, project)
    return {"config": config, "prepared": prepared, "train": train(config, project)}


def test_prepare_writes_the_new_tokens_as_single_tokens(project: Path, trained: dict) -> None:
    ids = [259, 260]  # appended after the 259 tokens of the base tokenizer
    from datasets import load_from_disk

    train_split = load_from_disk(str(project / "data/prepared"))["train"]
    first = train_split[0]["input_ids"]
    assert first.count(ids[0]) >= 2 and ids[1] in first  # a system-less chatml turn: user, then assistant


def test_the_adapter_carries_the_new_rows_and_peft_loads_it(project: Path, trained: dict) -> None:
    out = Path(trained["train"]["output_dir"])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["trainable_token_indices"] == {"model.embed_tokens": [259, 260], "lm_head": [259, 260]}
    state = load_file(out / "adapter_model.safetensors")
    rows = state["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert rows.shape == (2, 64) and "base_model.model.lm_head.token_adapter.trainable_tokens_delta" in state

    config = resolve_model_path(trained["config"], project)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == 261 and tokenizer.convert_tokens_to_ids(TOKENS) == [259, 260]
    ours = load_base_model(config.model, tokenizer=tokenizer)
    start = ours.get_input_embeddings().weight[259:261].clone()  # the rows a new token starts with (the mean)
    assert not torch.allclose(rows, start), "training did not move the new tokens' rows"
    load_adapter(ours, out)

    base = AutoModelForCausalLM.from_pretrained(project / "base-model")  # a peft user: resize, then load
    base.resize_token_embeddings(len(tokenizer))
    theirs = peft.PeftModel.from_pretrained(base, out).eval()
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        assert (ours.eval()(input_ids=ids).logits - theirs(input_ids=ids).logits).abs().max() <= 1e-5


def test_evaluate_and_export_use_the_grown_vocabulary(project: Path, trained: dict) -> None:
    config = trained["config"]
    metrics = evaluate(config, project)["metrics"]
    assert metrics["adapter.loss"] < metrics["base.loss"]
    summary = export(config, project)
    assert summary["merged"] and summary["parity_passed"]
    merged_dir = project / config.export.output_dir
    assert json.loads((merged_dir / "config.json").read_text())["vocab_size"] == 261
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = prompt_ids(tokenizer)
    reference = load_base_model(resolve_model_path(config, project).model, tokenizer=tokenizer)
    load_adapter(reference, Path(trained["train"]["output_dir"]))
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - reference.eval()(input_ids=ids).logits).abs().max() <= 1e-4


def test_the_error_for_missing_template_tokens_names_add_tokens(project: Path, capsys) -> None:
    args = ["prepare", str(project / "params.yaml"), "--root", str(project), "model.add_tokens=[]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "<|im_start|>, <|im_end|>" in err
    assert "model.add_tokens: ['<|im_start|>', '<|im_end|>']" in err


def test_add_tokens_with_an_adapter_that_cannot_train_rows_is_a_config_error(project: Path, capsys) -> None:
    args = ["prepare", str(project / "params.yaml"), "--root", str(project), "adapter.type=ia3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        "model.add_tokens: set, but adapter.type 'ia3' cannot train" in err
        and "allowed: adapter.type lora" in err
    )
