"""Quantized bases (QLoRA): `model.quantization` -> transformers' `BitsAndBytesConfig`.

    model = load_base_model(config.model)         # 4-bit when model.quantization.bits == 4

The frozen linear layers of the base are stored by bitsandbytes in 4 bits (`Linear4bit`, nf4/fp4) or
8 bits (`Linear8bitLt`); the output head and classification heads stay unquantized (they are trained
or read in full precision), as in transformers' and peft's QLoRA set-ups. Adapters wrap the quantized
layers (see `peft_framework.adapters.base_layers`) and train in full precision on top. Export merges
into the *unquantized* base (`unquantized`): a 4-bit weight cannot hold a merged update.

bitsandbytes 0.50 runs 4- and 8-bit layers on CPU as well as CUDA, so quantized runs are tested on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from peft_framework.config.schema import ModelConfig, QuantizationConfig
from peft_framework.errors import ConfigError

#: heads never quantized: trained (modules_to_save) or read in full precision (lm_head, as transformers)
SKIP_MODULES = ["lm_head", "score", "classifier"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_quantized_config(model_config: ModelConfig) -> bool:
    return model_config.quantization.bits is not None


def unquantized(model_config: ModelConfig) -> ModelConfig:
    """The same base without quantization: what export merges into and compares with."""
    return model_config.model_copy(update={"quantization": QuantizationConfig()})


def require_bitsandbytes(bits: int) -> None:
    """ConfigError (not an ImportError traceback) when bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "invalid config",
            [
                f"model.quantization.bits: {bits} needs bitsandbytes, which is not installed ({exc}); "
                "install it with `pip install 'peft-framework[quant]'` or set model.quantization.bits: null"
            ],
        ) from None


def compute_dtype(model_config: ModelConfig) -> torch.dtype:
    """The dtype 4-bit layers compute in: the key, else model.dtype when it is bf16/fp16, else float32."""
    q = model_config.quantization
    if q.compute_dtype is not None:
        return _DTYPES[q.compute_dtype]
    if model_config.dtype in ("bfloat16", "float16"):
        return _DTYPES[model_config.dtype]
    return torch.float32


def bnb_config(model_config: ModelConfig) -> Any:
    """transformers' BitsAndBytesConfig for `model.quantization` (None when it is off)."""
    q = model_config.quantization
    if q.bits is None:
        return None
    require_bitsandbytes(q.bits)
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type or "nf4",
        bnb_4bit_use_double_quant=True if q.double_quant is None else q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(model_config),
        llm_int8_skip_modules=SKIP_MODULES,
    )


def device_map() -> dict[str, Any] | str:
    """Where quantized weights are placed at load time (bitsandbytes quantizes as it places them): this
    process's GPU under torchrun/accelerate, else the only GPU, else the CPU."""
    if torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return "cpu"


def load_kwargs(model_config: ModelConfig) -> dict[str, Any]:
    """Extra `from_pretrained` keyword arguments for a quantized base (empty when it is off)."""
    config = bnb_config(model_config)
    if config is None:
        return {}
    return {"quantization_config": config, "device_map": device_map()}


def is_quantized_model(model: torch.nn.Module) -> bool:
    """Loaded in 4 or 8 bits by transformers (bitsandbytes)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def quantization_summary(model_config: ModelConfig) -> dict[str, Any] | None:
    """What the manifest and reports record about the base's quantization (None: not quantized)."""
    q = model_config.quantization
    if q.bits is None:
        return None
    if q.bits == 8:
        return {"bits": 8, "method": "bitsandbytes LLM.int8 (Linear8bitLt)"}
    return {
        "bits": 4,
        "method": "bitsandbytes Linear4bit",
        "quant_type": q.quant_type or "nf4",
        "double_quant": True if q.double_quant is None else q.double_quant,
        "compute_dtype": str(compute_dtype(model_config)).removeprefix("torch."),
    }


def quantize_built_model(model: Any, model_config: ModelConfig) -> Any:
    """A model built in memory (the built-in tiny Llama, a benchmark model from a config) reloaded through
    `from_pretrained` with the quantization config: transformers quantizes only while loading weights."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="peft-framework-quantize-") as tmp:
        model.save_pretrained(tmp)
        name_or_path = model.config.name_or_path
        dtype = next(model.parameters()).dtype
        del model
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = (
            AutoModelForSequenceClassification
            if model_config.task == "sequence_classification"
            else AutoModelForCausalLM
        )
        loaded = auto.from_pretrained(tmp, dtype=dtype, **load_kwargs(model_config))
    loaded.config.name_or_path = name_or_path
    return loaded.eval()


def keep_off_cpu_packed_path(model: torch.nn.Module) -> torch.nn.Module:
    """Keep bitsandbytes' 4-bit layers off their CPU packed-weight path (returns `model`).

    On CPUs with avx512_bf16, bitsandbytes 0.50 repacks a `Linear4bit` weight on its first eval-mode
    forward without gradients, and that repacking fails for shapes it does not expect
    (`shape '[64, 5]' is invalid` for intermediate 352, `N must be divisible by block_n` on the built-in
    tiny Llama): evaluation and generation on a 4-bit base crashed. The flag it checks is per layer;
    turned off, eval takes the same dequantizing path as training, so eval and train logits agree.
    """
    import bitsandbytes as bnb  # only for quantized bases: the caller checked model.quantization

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def config_problems(model_config: ModelConfig, adapter_type: str) -> list[str]:
    """Combinations of `model.quantization` with other keys that cannot work, one line each."""
    bits = model_config.quantization.bits
    if bits is None:
        return []
    from peft_framework.adapters import registry

    method = registry.get(adapter_type)
    if getattr(method, "quantized_bases", False):
        return []
    able = sorted(n for n, m in registry.all_methods().items() if getattr(m, "quantized_bases", False))
    return [
        f"model.quantization.bits: {bits}, but adapter.type {adapter_type!r} cannot wrap bitsandbytes "
        f"{bits}-bit layers; allowed: model.quantization.bits null, or adapter.type {' | '.join(able)}"
    ]
