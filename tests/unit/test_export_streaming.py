"""Shard-by-shard merging: several shards in, several shards out, exact, with peak memory below the
model's size; and the pieces it is built from (key mapping, adapter tensor placement, memory probe)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, ModelConfig
from peft_framework.errors import UserError
from peft_framework.export import export
from peft_framework.export.memory import PeakRSS
from peft_framework.export.merge import map_keys, open_checkpoint, place_adapter_tensors
from peft_framework.export.stage import EXPORT_REPORT
from peft_framework.models.tiny import tiny_tokenizer


def _llama(
    hidden: int, layers: int, intermediate: int, vocab: int = 1024, bias: bool = False
) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attention_bias=bias,
    )
    return LlamaForCausalLM(config).eval()


def _save_base_and_adapter(root: Path, model: nn.Module, shard: str, adapter) -> Config:
    base = root / "base"
    model.save_pretrained(str(base), max_shard_size=shard)
    tiny_tokenizer().save_pretrained(str(base))
    config = Config(model=ModelConfig(name_or_path=str(base)), adapter=adapter)
    method = get_adapter(adapter.type)
    method.inject(model, adapter)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    save_adapter(
        model,
        method,
        adapter,
        root / config.train.output_dir,
        base_model_name_or_path=str(base),
        task_type="causal_lm",
    )
    return config


@pytest.mark.slow
def test_multi_shard_merge_peak_memory_below_model_size(tmp_path):
    torch.set_num_threads(1)
    model = _llama(hidden=512, layers=4, intermediate=1376, vocab=2000)  # ~59 MB in float32
    config = _save_base_and_adapter(tmp_path, model, "10MB", LoraConfig(r=8, target_modules="all-linear"))
    del model
    assert len(open_checkpoint(tmp_path / "base").shards) >= 3

    summary = export(config, tmp_path)
    out = tmp_path / config.export.output_dir
    report = json.loads((out / EXPORT_REPORT).read_text())  # the full report; report_path holds its numbers
    print(  # the figures, for the record (pytest -s)
        f"\nshards {report['num_shards']}, model {report['model_bytes'] / 1e6:.1f} MB, largest shard "
        f"{report['largest_shard_bytes'] / 1e6:.1f} MB, adapter {report['adapter_bytes'] / 1e6:.2f} MB, peak RSS "
        f"growth {report['peak_rss_growth_bytes'] / 1e6:.1f} MB ({report['peak_rss_method']}), merge "
        f"{report['merge_seconds']:.2f} s, parity max |diff| {report['parity_max_abs_diff']:.2e}"
    )
    assert report["num_shards"] == len(open_checkpoint(out).shards) >= 3
    assert (out / "model.safetensors.index.json").is_file()
    assert report["model_bytes"] > 50e6
    # the point of streaming: the merge never held the whole model (a memory comparison, not a timing)
    assert 0 < report["peak_rss_growth_bytes"] < report["model_bytes"]
    assert report["parity_passed"] and report["parity_max_abs_diff"] < 1e-3
    assert summary["tensors_from_adapter"] == [] and summary["checkpoint_tensors_dropped"] == []

    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    reference = LlamaForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    load_adapter(reference, tmp_path / config.train.output_dir)
    ids = torch.tensor([[1, 5, 80, 300, 1999, 7, 42]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("adapter_type", ["ia3", "adalora"])
def test_other_mergeable_types_stream_merge_generically(tmp_path, adapter_type):
    """IA3 and AdaLoRA go through the same code (their own inject/merge/unload); biases and weights of
    one module may sit in different shards."""
    method = get_adapter(adapter_type)
    extra = {"total_step": 10} if adapter_type == "adalora" else {}
    adapter = method.config_class(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], **extra)
    model = _llama(hidden=64, layers=2, intermediate=128, vocab=300, bias=True)
    config = _save_base_and_adapter(tmp_path, model, "60KB", adapter)
    assert len(open_checkpoint(tmp_path / "base").shards) >= 3
    summary = export(config, tmp_path)
    assert summary["adapter_type"] == adapter_type and summary["merged"]
    assert summary["num_shards"] >= 3 and summary["parity_max_abs_diff"] < 1e-4


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as memory:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, written
        del block
    assert memory.growth_bytes >= 60 * 1024 * 1024
    with PeakRSS() as idle:
        pass
    assert idle.growth_bytes < 16 * 1024 * 1024


def test_map_keys_handles_base_model_prefix_and_drops_unknown():
    model_keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    mapping, unused = map_keys(
        ["model.norm.weight", "embed_tokens.weight", "lm_head.weight", "extra.weight"], model_keys, "model"
    )
    assert mapping == {
        "model.norm.weight": "model.norm.weight",
        "embed_tokens.weight": "model.embed_tokens.weight",
        "lm_head.weight": "lm_head.weight",
    }
    assert unused == ["extra.weight"]


def test_adapter_tensors_follow_their_base_weights_to_meta_or_memory():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model.load_state_dict({"0.weight": torch.ones(4, 4), "0.bias": torch.zeros(4)}, strict=False, assign=True)
    base_ids = {id(t) for t in model.parameters()}
    get_adapter("lora").inject(model, LoraConfig(r=2, target_modules=["0", "1"]))
    place_adapter_tensors(model, base_ids)
    real, meta = model[0], model[1]
    assert not real.lora_A["default"].weight.is_meta and not real.lora_B["default"].weight.is_meta
    assert meta.lora_A["default"].weight.is_meta and meta.lora_B["default"].weight.is_meta


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(
        UserError, match="pickle weights are loaded only with model.allow_pickle_weights: true"
    ):
        open_checkpoint(tmp_path)
