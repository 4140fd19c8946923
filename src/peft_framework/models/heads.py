"""Does a model's head fit the task it is about to be used for? Checked before loading, from config.json.

transformers' Auto classes load almost anything: `AutoModelForCausalLM` on an exported
BertForSequenceClassification builds a BertLMHeadModel whose LM head is random (the `cls.*` weights are
missing) and generates nonsense with no error. `check_head` refuses that, naming the architecture, for
`generate` and `predict` alike.
"""

from __future__ import annotations

from typing import Any

from peft_framework.config.schema import ModelConfig
from peft_framework.errors import UserError

TASK_HEADS = {
    "causal_lm": "a causal language model (*ForCausalLM)",
    "sequence_classification": "a classifier",
}


def architectures(model_config: ModelConfig) -> list[str] | None:
    """`architectures` of the model's config.json; None when unknown (built-in models, unreadable configs:
    the loader reports those itself)."""
    if model_config.name_or_path.startswith("builtin:"):
        return None
    from transformers import AutoConfig

    try:
        config: Any = AutoConfig.from_pretrained(
            model_config.name_or_path,
            revision=model_config.revision,
            trust_remote_code=model_config.trust_remote_code,
        )
    except Exception:  # noqa: BLE001 - not ours to report here: load_base_model says what is wrong
        return None
    return list(getattr(config, "architectures", None) or []) or None


def head_kind(archs: list[str]) -> str | None:
    """'causal_lm', 'sequence_classification' or None (a bare encoder, another head) for architectures."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    if any(a in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values() for a in archs):
        return "sequence_classification"
    if any(a in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() or a.endswith("ForCausalLM") for a in archs):
        return "causal_lm"
    return None


def check_head(
    model_config: ModelConfig, *, what: str, head_from_adapter: bool = False, key: str = "model"
) -> None:
    """Refuse a model whose trained head does not fit `model_config.task`.

    causal_lm needs a causal-LM architecture. sequence_classification needs a trained classifier: the model's
    own (`*ForSequenceClassification`, e.g. a merged export), or one the adapter saves (`head_from_adapter`:
    adapter.modules_to_save), since any other base gets a new, random head.
    """
    archs = architectures(model_config)
    if archs is None:
        return
    kind = head_kind(archs)
    task = model_config.task
    if kind == task or (task == "sequence_classification" and head_from_adapter):
        return
    name = ", ".join(archs)
    hint = ""
    if kind == "sequence_classification":
        hint = f"; it is a classifier: use `peft-framework predict {model_config.name_or_path}`"
    elif task == "sequence_classification":
        hint = (
            "; its classification head would be new and random: use a model trained for classification (the "
            "merged export), or an adapter that saves the head (adapter.modules_to_save, e.g. [classifier])"
        )
    raise UserError(
        f"{key}: {model_config.name_or_path!r} is a {name}, which has no head for model.task "
        f"{task!r}; {what} needs {TASK_HEADS[task]}{hint}"
    )
