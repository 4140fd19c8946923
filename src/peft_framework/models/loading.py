"""Load the base model and its tokenizer: hub id, local directory, or the built-in tiny demo.

    tokenizer = load_tokenizer(config.model)
    model = load_base_model(config.model, label_names=["negative", "positive"])

Hub ids and local directories go through transformers' Auto classes (`AutoModelForCausalLM`,
`AutoModelForSequenceClassification`); `trust_remote_code` is off unless the config turns it on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from peft_framework.config.schema import BUILTIN_TINY_LLAMA, BUILTIN_TINY_VLM, BUILTIN_TINY_VLMS, ModelConfig
from peft_framework.errors import ConfigError
from peft_framework.models.quantization import (
    is_quantized_config,
    keep_off_cpu_packed_path,
    load_kwargs,
    quantize_built_model,
)

BUILTIN_TINY_MOE = "builtin:tiny-moe"
BUILTIN_MODELS = (BUILTIN_TINY_LLAMA, BUILTIN_TINY_MOE, *BUILTIN_TINY_VLMS)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_builtin(name_or_path: str) -> bool:
    return name_or_path.startswith("builtin:")


def _check_builtin(name_or_path: str) -> None:
    if name_or_path not in BUILTIN_MODELS:
        raise ConfigError(
            "invalid config",
            [
                f"model.name_or_path: {name_or_path!r} is not a built-in model; allowed: "
                f"{', '.join(BUILTIN_MODELS)}, "
                "a HuggingFace hub id or a local model directory"
            ],
        )


def _check_builtin_task(model_config: ModelConfig) -> None:
    """builtin:tiny-vlm(-gemma3) are vision-language models, builtin:tiny-llama a text one."""
    name, task = model_config.name_or_path, model_config.task
    vlm_task = task == "image_text_to_text"
    if is_builtin(name) and (name in BUILTIN_TINY_VLMS) != vlm_task:
        want = BUILTIN_TINY_VLM if vlm_task else BUILTIN_TINY_LLAMA
        raise ConfigError(
            "invalid config",
            [f"model.name_or_path: {name!r} does not fit model.task {task!r}; allowed: {want!r}"],
        )


try:  # transformers 5 configs are strict dataclasses: a wrong-typed config.json field fails there
    from huggingface_hub.errors import StrictDataclassError

    _HUB_ERRORS: tuple[type[BaseException], ...] = (StrictDataclassError,)
except ImportError:  # pragma: no cover - older huggingface_hub
    _HUB_ERRORS = ()

# failures of a local model directory's own files (wrong-typed config.json fields, truncated or corrupt
# weights, text that is not UTF-8): the directory's problem, reported as such instead of as a traceback
_BAD_LOCAL_FILES = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    RecursionError,
    RuntimeError,
    SafetensorError,
    *_HUB_ERRORS,
)


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id (`org/name`): absolute, ./ ../ ~, a backslash, or 2+ slashes."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1 or name == "."
    )


def _load_problem(name: str, what: str, exc: BaseException) -> str:
    """The one-line reason why `name` could not be loaded as `what`."""
    path = Path(name).expanduser()
    if looks_like_path(name) and not path.exists():
        return (
            f"model.name_or_path: cannot load {name!r}: no such local model directory (relative paths are resolved against "
            "the project root, --root); hub ids look like 'org/name'"
        )
    if path.is_dir():
        pickled = sorted(p.name for p in path.glob("*.bin"))
        has_safe = any(path.glob("*.safetensors"))
        if pickled and not has_safe:
            return (
                f"model.name_or_path: {name!r} has only pickle weights ({', '.join(pickled[:3])}); they are not "
                "loaded unless model.allow_pickle_weights is true: unpickling a file can run arbitrary code. "
                "Convert them to safetensors, or set model.allow_pickle_weights: true for files you trust"
            )
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        return f"model.name_or_path: {path}: cannot load the {what} from this directory ({detail[:1000]})"
    detail = " ".join(str(exc).split())
    return f"model.name_or_path: cannot load {what} {name!r}: {detail[:1000]}"


def torch_dtype(model_config: ModelConfig) -> torch.dtype | str:
    """`model.dtype` as transformers wants it ('auto' passes through)."""
    return "auto" if model_config.dtype == "auto" else _DTYPES[model_config.dtype]


def load_tokenizer(model_config: ModelConfig) -> PreTrainedTokenizerBase:
    if model_config.task == "image_text_to_text":  # the processor's tokenizer (models/vlm.py)
        from peft_framework.models.vlm import load_processor

        processor = load_processor(model_config)
        tokenizer = processor.tokenizer
        if not getattr(tokenizer, "chat_template", None):  # the processor's template formats the data
            tokenizer.chat_template = processor.chat_template
        return tokenizer
    if is_builtin(model_config.name_or_path):
        _check_builtin(model_config.name_or_path)
        from peft_framework.models.tiny import tiny_tokenizer

        return _with_added_tokens(tiny_tokenizer(), model_config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_config.name_or_path,
            revision=model_config.revision,
            trust_remote_code=model_config.trust_remote_code,
        )
    except _BAD_LOCAL_FILES as exc:
        if not isinstance(exc, (OSError, ValueError)) and not Path(model_config.name_or_path).is_dir():
            raise  # not a problem of a local directory's files: a bug, keep the traceback
        raise ConfigError(
            "invalid config", [_load_problem(model_config.name_or_path, "tokenizer", exc)]
        ) from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return _with_added_tokens(tokenizer, model_config)


def _with_added_tokens(
    tokenizer: PreTrainedTokenizerBase, model_config: ModelConfig
) -> PreTrainedTokenizerBase:
    if model_config.add_tokens:
        from peft_framework.models.added_tokens import add_tokens

        add_tokens(tokenizer, model_config.add_tokens)
    return tokenizer


def resolve_num_labels(
    model_config: ModelConfig, num_labels: int | None = None, label_names: Sequence[str] | None = None
) -> int | None:
    """The number of classes: explicit argument, else `model.num_labels`, else the data's label names.

    A `model.num_labels` that disagrees with the data's labels is a ConfigError.
    """
    if model_config.task != "sequence_classification":
        return None
    from_data = len(label_names) if label_names else None
    if model_config.num_labels is not None and from_data is not None and model_config.num_labels != from_data:
        raise ConfigError(
            "invalid config",
            [
                f"model.num_labels: {model_config.num_labels} but the prepared data has {from_data} labels "
                f"({', '.join(label_names or [])}); allowed: null (take them from the data) or {from_data}"
            ],
        )
    resolved = num_labels or model_config.num_labels or from_data
    if resolved is None:
        raise ConfigError(
            "invalid config",
            [
                "model.num_labels: null and no label names are known "
                "(prepare the data first, or set model.num_labels)"
            ],
        )
    return resolved


def load_base_model(
    model_config: ModelConfig,
    num_labels: int | None = None,
    *,
    label_names: Sequence[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PreTrainedModel:
    """The base model for `model.task`, in `model.dtype` (returned in eval mode), quantized per
    `model.quantization` (bitsandbytes; see `peft_framework.models.quantization`).

    For sequence classification the head has `num_labels` classes (from the argument, `model.num_labels`
    or `label_names`, in that order); `label_names` also become `config.id2label`. Models without a pad
    token id (Llama, Qwen, ...) get the tokenizer's, since classification heads pool the last non-pad token.
    Newly initialised weights (the classification head) come from torch's global RNG: seed before calling.
    With `model.add_tokens`, the embeddings grow to `len(tokenizer)` rows (pass the tokenizer the adapter
    was saved with when loading one).
    """
    task = model_config.task
    n_labels = resolve_num_labels(model_config, num_labels, label_names)
    name = model_config.name_or_path
    _check_builtin_task(model_config)
    if is_builtin(name):
        _check_builtin(name)
        if task == "image_text_to_text":
            from peft_framework.models.tiny_vlm import tiny_vlm

            model = tiny_vlm(BUILTIN_TINY_VLMS[name])[0]
        else:
            from peft_framework.models.tiny import tiny_llama, tiny_moe

            build = tiny_moe if name == BUILTIN_TINY_MOE else tiny_llama
            model = build(task=task, num_labels=n_labels or 2)
        if model_config.dtype not in ("float32", "auto"):
            model = model.to(_DTYPES[model_config.dtype])
        if is_quantized_config(model_config):
            model = quantize_built_model(model, model_config)
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        kwargs: dict = dict(
            revision=model_config.revision,
            trust_remote_code=model_config.trust_remote_code,
            dtype=torch_dtype(model_config),
            **load_kwargs(model_config),
            # safetensors only, unless the config opts in to pickle (transformers then unpickles with
            # torch's weights_only=True, which still trusts the file's structure)
            use_safetensors=None if model_config.allow_pickle_weights else True,
        )
        if task == "image_text_to_text":
            from transformers import AutoModelForImageTextToText

            auto = AutoModelForImageTextToText
        elif task == "sequence_classification":
            auto = AutoModelForSequenceClassification
            kwargs["num_labels"] = n_labels
            if label_names and len(label_names) == n_labels:
                kwargs["id2label"] = dict(enumerate(label_names))
                kwargs["label2id"] = {label: i for i, label in enumerate(label_names)}
        else:
            auto = AutoModelForCausalLM
        try:
            model = auto.from_pretrained(name, **kwargs)
        except _BAD_LOCAL_FILES as exc:
            if not isinstance(exc, (OSError, ValueError)) and not Path(name).is_dir():
                raise  # not a problem of a local directory's files: a bug, keep the traceback
            raise ConfigError("invalid config", [_load_problem(name, f"{task} model", exc)]) from exc
    if is_quantized_config(model_config):
        keep_off_cpu_packed_path(model)
    if model_config.add_tokens:  # rows for the tokens the tokenizer gained (models/added_tokens.py)
        from peft_framework.models.added_tokens import grow_embeddings

        tokenizer = tokenizer or load_tokenizer(model_config)
        grow_embeddings(model, len(tokenizer))
    if task == "sequence_classification":
        if label_names and len(label_names) == n_labels:
            model.config.id2label = dict(enumerate(label_names))
            model.config.label2id = {label: i for i, label in enumerate(label_names)}
        if getattr(model.config, "pad_token_id", None) is None:
            tokenizer = tokenizer or load_tokenizer(model_config)
            model.config.pad_token_id = tokenizer.pad_token_id
    return model


def resolve_model_path(config: Any, root: str | os.PathLike[str]) -> Any:
    """`config` with a relative local `model.name_or_path` resolved against the project root, like every
    other path in the config (unchanged when it means the same directory from here, or is a hub id)."""
    name = config.model.name_or_path
    if is_builtin(name) or Path(name).expanduser().is_absolute():
        return config
    candidate = Path(root) / name
    if not candidate.is_dir() or (Path(name).is_dir() and Path(name).resolve() == candidate.resolve()):
        return config
    model = config.model.model_copy(update={"name_or_path": str(candidate.resolve())})
    return config.model_copy(update={"model": model})
