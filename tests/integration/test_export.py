"""The export stage: merged model dirs that plain transformers loads and that match base + adapter
(checked against HuggingFace peft too), the parity gate, and the adapter-only export of types that
cannot be merged."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file

from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, DataConfig, ExportConfig, ModelConfig
from peft_framework.errors import StageFailed
from peft_framework.export import export
from peft_framework.export.stage import EXPORT_METRICS, EXPORT_REPORT
from peft_framework.models.loading import load_base_model, load_tokenizer

pytestmark = pytest.mark.slow

IDS = [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [1, 84, 104, 101, 32, 99, 97, 116]]


def make_adapter(root: Path, config: Config, label_names=None) -> None:
    """A saved adapter of `config.adapter` with random (as if trained) tensors, plus the tokenizer."""
    tokenizer = load_tokenizer(config.model)
    torch.manual_seed(config.train.seed)
    model = load_base_model(config.model, label_names=label_names, tokenizer=tokenizer)
    method = get_adapter(config.adapter.type)
    method.inject(model, config.adapter)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * (0.3 if "lora_B" in name else 0.05))
    out = root / config.train.output_dir
    save_adapter(
        model,
        method,
        config.adapter,
        out,
        base_model_name_or_path=config.model.name_or_path,
        task_type=config.model.task,
    )
    tokenizer.save_pretrained(out)


@torch.no_grad()
def base_plus_adapter_logits(config: Config, root: Path, ids, label_names=None) -> torch.Tensor:
    torch.manual_seed(config.train.seed)
    model = load_base_model(config.model, label_names=label_names)
    load_adapter(model, root / config.train.output_dir)
    return _logits(model.eval(), ids)


def _logits(model, ids) -> torch.Tensor:
    return torch.cat([model(input_ids=torch.tensor([row])).logits[0, -1:].float() for row in ids])


@pytest.fixture(scope="module")
def causal_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_causal")
    config = Config(adapter=LoraConfig(r=4, alpha=8, target_modules="all-linear"))  # builtin:tiny-llama
    make_adapter(root, config)
    summary = export(config, root)
    return root, config, summary


def test_report_records_merge_and_parity(causal_export):
    root, config, summary = causal_export
    metrics = json.loads((root / config.export.report_path).read_text())  # a DVC metric: numbers only
    assert set(metrics) == {k for k in EXPORT_METRICS if not k.startswith("load_check")}  # those: unmerged
    assert metrics["parity_passed"] == 1
    report = json.loads((root / config.export.output_dir / EXPORT_REPORT).read_text())
    assert report["merged"] is True and report["adapter_type"] == "lora"
    assert report["dtype"] == "float32" and report["merge_compute_dtype"] == "float32"
    assert report["num_shards"] == 1
    assert report["parity_passed"] is True
    assert 0 <= report["parity_max_abs_diff"] <= report["parity_atol"] == 1e-3
    assert report["parity_samples"] == 4  # no prepared data: the built-in probe texts
    assert report["peak_rss_growth_bytes"] >= 0 and report["merge_seconds"] >= 0
    assert report["generation_config"] == {"eos_token_id": 2, "pad_token_id": 0, "bos_token_id": 1}
    assert summary["output_sha256"] == report["output_sha256"]


def test_exported_dir_loads_in_plain_transformers_in_a_fresh_process(causal_export, tmp_path):
    """No peft_framework import at all: AutoModelForCausalLM + AutoTokenizer + generation config."""
    root, config, _ = causal_export
    out = tmp_path / "logits.safetensors"
    script = f"""
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
d = {str(root / config.export.output_dir)!r}
model = AutoModelForCausalLM.from_pretrained(d).eval()
tok = AutoTokenizer.from_pretrained(d)
gen = GenerationConfig.from_pretrained(d)
assert gen.eos_token_id == tok.eos_token_id == 2 and gen.pad_token_id == tok.pad_token_id == 0, (gen, tok)
assert tok.chat_template and "generation" in tok.chat_template
ids = {IDS!r}
with torch.no_grad():
    logits = torch.cat([model(input_ids=torch.tensor([r])).logits[0, -1:] for r in ids])
    model.generate(torch.tensor([ids[0]]), max_new_tokens=3)  # generation_config is usable as is
assert not any(m.startswith("peft_framework") for m in sys.modules), "framework code was imported"
save_file({{"logits": logits.contiguous()}}, {str(out)!r})
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path, timeout=300)
    merged = load_file(str(out))["logits"]
    expected = base_plus_adapter_logits(config, root, IDS)
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(
        expected, _logits(load_base_model(config.model).eval(), IDS), atol=1e-3
    )  # adapter matters


def test_merged_model_matches_huggingface_peft(causal_export):
    import peft
    from transformers import AutoModelForCausalLM

    from peft_framework.models.tiny import tiny_llama

    root, config, _ = causal_export
    merged = AutoModelForCausalLM.from_pretrained(str(root / config.export.output_dir)).eval()
    with torch.no_grad():
        oracle = peft.PeftModel.from_pretrained(tiny_llama(), str(root / config.train.output_dir)).eval()
        torch.testing.assert_close(_logits(merged, IDS), _logits(oracle, IDS), atol=1e-4, rtol=0)


def test_sequence_classification_export(tmp_path):
    from transformers import AutoModelForSequenceClassification

    labels = ["negative", "neutral", "positive"]
    config = Config(
        model=ModelConfig(task="sequence_classification", num_labels=3),
        data=DataConfig(kind="classification"),
        adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    make_adapter(tmp_path, config, label_names=labels)
    summary = export(config, tmp_path)
    assert summary["merged"] and summary["parity_passed"]
    out = tmp_path / config.export.output_dir
    assert not (out / "generation_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 3
    with torch.no_grad():
        got = torch.cat([model(input_ids=torch.tensor([r])).logits for r in IDS])
        torch.manual_seed(config.train.seed)
        reference = load_base_model(config.model)
        load_adapter(reference, tmp_path / config.train.output_dir)
        expected = torch.cat([reference.eval()(input_ids=torch.tensor([r])).logits for r in IDS])
    torch.testing.assert_close(
        got, expected, atol=1e-4, rtol=0
    )  # the trained head (modules_to_save) came along


def test_parity_failure_fails_the_stage_and_writes_nothing(tmp_path, causal_export):
    root, config, _ = causal_export
    strict = config.model_copy(
        update={
            "export": ExportConfig(
                output_dir=str(tmp_path / "merged"),
                report_path=str(tmp_path / "export.json"),
                dtype="bfloat16",
                parity_atol=1e-9,
            )
        }
    )
    with pytest.raises(StageFailed, match=r"export.parity_atol 1e-09.*bfloat16"):
        export(strict, root)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "export.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp dirs left behind either

    # an earlier good export at the same place is left as it was
    ok = strict.model_copy(
        update={"export": strict.export.model_copy(update={"dtype": "float32", "parity_atol": None})}
    )
    export(ok, root)
    before = {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()}
    with pytest.raises(StageFailed):
        export(strict, root)
    assert {p.name: p.read_bytes() for p in (tmp_path / "merged").iterdir()} == before


def test_bfloat16_export_dtype_is_recorded_and_loaded(tmp_path, causal_export):
    root, config, _ = causal_export
    cfg = config.model_copy(
        update={
            "export": ExportConfig(
                output_dir=str(tmp_path / "m"), report_path=str(tmp_path / "r.json"), dtype="bfloat16"
            )
        }
    )
    summary = export(cfg, root)
    assert summary["dtype"] == "bfloat16" and summary["parity_loaded_dtype"] == "bfloat16"
    assert summary["parity_atol"] == pytest.approx(max(0.05, 0.1 * summary["parity_max_abs_logit"]))
    assert summary["parity_max_abs_diff"] <= summary["parity_atol"]
    assert summary["parity_top1_agreement"] > 0.8
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(tmp_path / "m" / "model.safetensors")).values()} == {
        torch.bfloat16
    }


def test_non_mergeable_adapter_exports_the_adapter_and_says_so(tmp_path, caplog):
    from peft_framework.adapters.bottleneck import BottleneckConfig
    from peft_framework.inference import MultiAdapterModel

    config = Config(adapter=BottleneckConfig())
    make_adapter(tmp_path, config)
    with caplog.at_level(logging.WARNING, logger="peft_framework.export"):
        summary = export(config, tmp_path)
    assert summary["merged"] is False
    assert summary["reason"] == "adapter type 'bottleneck' cannot be merged into the base weights"
    assert any("NOT merged" in r.getMessage() and "bottleneck" in r.getMessage() for r in caplog.records)
    report = json.loads((tmp_path / config.export.output_dir / EXPORT_REPORT).read_text())
    assert report["merged"] is False and "MultiAdapterModel.from_export" in report["load_with"]
    # no merge, so no parity: the export's own check loaded it back from base_model.json (issue 28)
    assert (
        report["load_check_passed"] is True and report["load_check_max_abs_diff"] <= report["load_check_atol"]
    )
    metrics = json.loads((tmp_path / config.export.report_path).read_text())
    assert metrics["merged"] == 0 and metrics["load_check_passed"] == 1 and "parity_passed" not in metrics
    out = tmp_path / config.export.output_dir
    assert not list(out.glob("model*.safetensors"))  # no merged weights pretending to be a model
    reference = json.loads((out / "base_model.json").read_text())
    assert reference["base_model_name_or_path"] == "builtin:tiny-llama" and reference["merged"] is False
    loaded = MultiAdapterModel.from_export(out)
    expected = base_plus_adapter_logits(config, tmp_path, IDS)
    got = torch.cat([loaded.logits(torch.tensor([r]), adapter="default")[0, -1:] for r in IDS])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_merge_false_exports_a_peft_loadable_lora_adapter(tmp_path, causal_export):
    import peft

    from peft_framework.models.tiny import tiny_llama

    root, config, _ = causal_export
    cfg = config.model_copy(
        update={
            "export": ExportConfig(
                output_dir=str(tmp_path / "a"), report_path=str(tmp_path / "r.json"), merge=False
            )
        }
    )
    summary = export(cfg, root)
    assert summary["merged"] is False and summary["reason"] == "export.merge is false"
    assert "peft.PeftModel.from_pretrained" in summary["load_with"]
    oracle = peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            _logits(oracle, IDS), base_plus_adapter_logits(config, root, IDS), atol=1e-5, rtol=0
        )


def test_classifier_on_a_causal_lm_checkpoint_gets_its_head_from_the_adapter(tmp_path):
    """The base checkpoint has lm_head but no classification head: the trained head (modules_to_save)
    becomes an extra shard, lm_head is dropped, and the result loads without missing weights."""
    from transformers import AutoModelForSequenceClassification

    from peft_framework.models.tiny import tiny_llama, tiny_tokenizer

    base = tmp_path / "causal-base"
    tiny_llama().save_pretrained(str(base))
    tiny_tokenizer().save_pretrained(str(base))
    config = Config(
        model=ModelConfig(name_or_path=str(base), task="sequence_classification", num_labels=2),
        data=DataConfig(kind="classification"),
        adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    make_adapter(tmp_path, config)
    summary = export(config, tmp_path)
    assert summary["tensors_from_adapter"] == ["score.weight"]
    assert summary["checkpoint_tensors_dropped"] == ["lm_head.weight"]
    assert summary["tensors_left_out"] == [] and summary["num_shards"] == 2 and summary["parity_passed"]
    out = tmp_path / config.export.output_dir
    model, info = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        got = torch.cat([model.eval()(input_ids=torch.tensor([r])).logits for r in IDS])
        torch.manual_seed(config.train.seed)
        reference = load_base_model(config.model)
        load_adapter(reference, tmp_path / config.train.output_dir)
        expected = torch.cat([reference.eval()(input_ids=torch.tensor([r])).logits for r in IDS])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
