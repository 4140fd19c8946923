"""Several adapters on one base model, switched per call without reloading the base.

    from peft_framework.inference import MultiAdapterModel
    mam = MultiAdapterModel.from_base("builtin:tiny-llama")
    mam.load_adapter("summarize", "models/adapter-summarize")
    mam.load_adapter("translate", "models/adapter-translate")
    mam.generate("Translate: bonjour", adapter="translate")
    mam.generate("Hello", adapter=None)            # the plain base model
    mam.combine({"summarize": 0.5, "translate": 0.5}, "mix")   # LoRA only: a new weighted adapter

The base weights are loaded once; each adapter adds only its own small tensors, injected under its name
with the adapter type's `inject` (`load_adapter(model, dir, adapter_name=...)`), and a call activates
exactly one of them (or none) with the type's `set_active`. `generate_cli` backs
`peft-framework generate --base ... --adapter NAME=DIR --use NAME --prompt ...`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_framework.config.schema import ModelConfig
from peft_framework.errors import AdapterError, UserError
from peft_framework.runtime import pick_device

BASE = "base"  # reserved name: the base model without any adapter


class MultiAdapterModel:
    """One base model, any number of named adapters, one (or none) active per call."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, device: str | torch.device | None = None) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._methods: dict[str, Any] = {}  # adapter name -> AdapterMethod
        self._configs: dict[str, Any] = {}  # adapter name -> its adapter config
        self._active: str | None = None
        self.processor: Any = None  # vision-language models: the processor (generate with images)

    @classmethod
    def from_base(
        cls,
        base: str | ModelConfig,
        *,
        task: str = "causal_lm",
        dtype: str = "float32",
        revision: str | None = None,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        label_names: Sequence[str] | None = None,
    ) -> MultiAdapterModel:
        """Load the base model (hub id, local dir, `builtin:tiny-llama`, or a config's `model` section)
        and its tokenizer once. `label_names`: a classifier's classes (their number sizes a new head)."""
        from peft_framework.models.loading import load_base_model, load_tokenizer

        if isinstance(base, ModelConfig):
            model_config = base
        else:
            model_config = ModelConfig(name_or_path=base, task=task, dtype=dtype, revision=revision)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_config)
        model = load_base_model(model_config, tokenizer=tokenizer, label_names=label_names)
        out = cls(model, tokenizer, device=device)
        if model_config.task == "image_text_to_text":  # image prompts go through the processor
            from peft_framework.models.vlm import load_processor

            out.processor = load_processor(model_config)
            out.processor.tokenizer = tokenizer
        return out

    @classmethod
    def from_export(
        cls,
        export_dir: str | os.PathLike[str],
        *,
        name: str = "default",
        device: str | torch.device | None = None,
    ) -> MultiAdapterModel:
        """An unmerged export (`base_model.json` + the adapter): the named base model with the adapter
        loaded as `name` and active."""
        import json

        from peft_framework.models.saved_tokenizer import has_tokenizer, load_saved_tokenizer

        export_dir = Path(export_dir)
        reference = export_dir / "base_model.json"
        if not reference.is_file():
            raise UserError(
                f"{export_dir}: no base_model.json; this is not an unmerged export (a merged export loads with "
                "transformers' AutoModelFor...from_pretrained)"
            )
        info = json.loads(reference.read_text(encoding="utf-8"))
        model_config = ModelConfig(
            name_or_path=info["base_model_name_or_path"],
            task=info.get("task", "causal_lm"),
            dtype=info.get("dtype", "float32"),
            revision=info.get("revision"),
        )
        tokenizer = None
        if has_tokenizer(export_dir):
            tokenizer = load_saved_tokenizer(export_dir)
        model = cls.from_base(
            model_config, tokenizer=tokenizer, device=device, label_names=info.get("label_names")
        )
        model.load_adapter(name, export_dir)
        model.set_adapter(name)
        return model

    # ------------------------------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list[str]:
        return list(self._methods)

    @property
    def active_adapter(self) -> str | None:
        return self._active

    def load_adapter(self, name: str, adapter_dir: str | os.PathLike[str]) -> None:
        """Add the adapter saved in `adapter_dir` under `name` (the base is not reloaded)."""
        from peft_framework.adapters.checkpoint import load_adapter

        self._check_new_name(name)
        method, config = load_adapter(self.model, Path(adapter_dir), adapter_name=name)
        self._methods[name] = method
        self._configs[name] = config
        self.model.to(self.device).eval()
        self._activate(self._active)  # injection activates the new adapter; restore the previous state

    def combine(self, weights: dict[str, float], new_name: str) -> None:
        """A new LoRA adapter `new_name` whose update is sum_i w_i * update_i (exact, ranks concatenated)."""
        from peft_framework.adapters.lora import combine_adapters

        self._check_new_name(new_name)
        unknown = [n for n in weights if n not in self._methods]
        if unknown:
            raise AdapterError(f"combine: unknown adapters {unknown}; loaded: {self.adapters}")
        not_lora = [n for n in weights if self._methods[n].name != "lora"]
        if not_lora:
            raise AdapterError(
                f"combine: only LoRA adapters can be combined; {not_lora} are "
                f"{sorted({self._methods[n].name for n in not_lora})}"
            )
        self._configs[new_name] = combine_adapters(self.model, dict(weights), new_name)
        self._methods[new_name] = self._methods[next(iter(weights))]
        for param in self.model.parameters():  # injection made the new adapter trainable: inference only
            param.requires_grad = False
        self.model.to(self.device).eval()
        self._activate(self._active)

    def save_adapter(
        self, name: str, out_dir: str | os.PathLike[str], *, base_model_name_or_path: str | None = None
    ) -> Path:
        """Write adapter `name` (e.g. a combination). peft's layout: the files go to `out_dir/<name>/`
        (loadable with `load_adapter(..., out_dir, adapter_name=name)` or from that subfolder)."""
        from peft_framework.adapters.checkpoint import save_adapter

        method = self._method(name)
        task = (
            "sequence_classification"
            if "ForSequenceClassification" in type(self.model).__name__
            else "causal_lm"
        )
        return save_adapter(
            self.model,
            method,
            self._configs[name],
            out_dir,
            base_model_name_or_path=base_model_name_or_path,
            task_type=task,
            adapter_name=name,
        )

    def set_adapter(self, name: str | None) -> None:
        """Make `name` the active adapter (None or 'base': no adapter) for calls that do not name one."""
        self._activate(None if name == BASE else name)

    # ------------------------------------------------------------------------------------------- calls
    @torch.no_grad()
    def logits(
        self, input_ids: torch.Tensor, *, adapter: str | None = None, attention_mask=None
    ) -> torch.Tensor:
        self._activate(adapter)
        return self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
        ).logits

    @property
    def label_names(self) -> list[str]:
        """A classifier's class names by id, from the model config (`id2label`)."""
        config = self.model.config
        id2label = getattr(config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(config.num_labels)]

    @torch.no_grad()
    def classify(
        self,
        texts: Sequence[str],
        *,
        adapter: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> list[list[float]]:
        """Class probabilities (softmax, in `label_names` order) of each text with adapter `adapter` (None or
        'base': the base model). Right-padded, as training and evaluation batch them; texts longer than
        `max_length` tokens are truncated."""
        self._activate(None if adapter == BASE else adapter)
        previous = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        out: list[list[float]] = []
        try:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    truncation=max_length is not None,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                    verbose=False,
                )
                logits = self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                ).logits
                out.extend(logits.float().softmax(-1).tolist())
        finally:
            self.tokenizer.padding_side = previous
        return out

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 32,
        chat: bool = False,
        batch_size: int = 8,
        images: Sequence[Any] | None = None,
    ) -> str | list[str]:
        """Greedy continuation(s) of `prompt` with adapter `adapter` (None or 'base': the base model).

        chat=True wraps each prompt as a user turn in the tokenizer's chat template (with the generation
        prompt); otherwise the text is the model input as given (plus the tokenizer's BOS, if it adds one).
        """
        from peft_framework.evaluation.runner import generate

        self._activate(None if adapter == BASE else adapter)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if images is not None:
            texts = self._generate_on_images(prompts, list(images), max_new_tokens, batch_size)
            return texts[0] if isinstance(prompt, str) else texts
        add_special_tokens = True
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise UserError("generate: chat=True but the tokenizer has no chat template")
            prompts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            add_special_tokens = False
        texts = generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            add_special_tokens=add_special_tokens,
            device=self.device,
        )
        return texts[0] if isinstance(prompt, str) else texts

    def _generate_on_images(
        self, prompts: list[str], images: list[Any], max_new_tokens: int, batch_size: int
    ) -> list[str]:
        """Each prompt as a user turn showing its image (one image for all prompts, or one each)."""
        from peft_framework.evaluation.vision import generate_on_images

        if self.processor is None:
            raise UserError("generate: images need a vision-language base (model.task image_text_to_text)")
        if len(images) not in (1, len(prompts)):
            raise UserError(
                f"--image: {len(images)} images for {len(prompts)} prompts; allowed: one image, or one per prompt"
            )
        pictures = [_open_image(i) for i in images]
        if len(pictures) == 1:
            pictures = pictures * len(prompts)
        rendered = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]
        return generate_on_images(
            self.model,
            self.processor,
            rendered,
            [[img] for img in pictures],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=self.device,
        )

    # ---------------------------------------------------------------------------------------- internals
    def _check_new_name(self, name: str) -> None:
        if not name or name == BASE or name in self._methods:
            raise UserError(
                f"adapter name {name!r} is {'reserved for the base model' if name == BASE else 'already used' if name else 'empty'}; "
                f"loaded: {self.adapters}"
            )

    def _method(self, name: str):
        if name not in self._methods:
            raise UserError(
                f"no adapter named {name!r}; loaded: {', '.join(self.adapters) or 'none'} (or 'base')"
            )
        return self._methods[name]

    def _activate(self, name: str | None) -> None:
        if name is not None:
            self._method(name)
        for method in {id(m): m for m in self._methods.values()}.values():
            mine = name is not None and self._methods[name] is method
            method.set_active(self.model, name if mine else None)
        self._active = name


def _open_image(image: Any) -> Any:
    """A PIL image (RGB) from a PIL image or a path; UserError naming the file when it cannot be read."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"--image: cannot read {str(image)!r} as an image ({exc})") from None


def _base_model_config(base: str) -> ModelConfig:
    """`--base`: a model (hub id, local dir, builtin:*) or a YAML/JSON config file, whose model section is used."""
    path = Path(base)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        from peft_framework.config import load_config

        return load_config(path).model
    return ModelConfig(name_or_path=base)


def _tokenizer_for(model_config: ModelConfig, adapter_dirs: Sequence[str]):
    """The base model's tokenizer; if the base has none on disk, the first adapter directory's."""
    from peft_framework.models.loading import load_tokenizer
    from peft_framework.models.saved_tokenizer import has_tokenizer, load_saved_tokenizer

    try:
        return load_tokenizer(model_config)
    except UserError:
        for directory in adapter_dirs:
            if has_tokenizer(directory):
                return load_saved_tokenizer(directory)
        raise


def generate_cli(
    base: str,
    adapters: dict[str, str],
    use: str | None,
    prompts: list[str],
    max_new_tokens: int,
    images: Sequence[str] = (),
) -> list[str]:
    """`peft-framework generate`: load every `--adapter NAME=DIR` on the base once, answer each prompt
    with `--use NAME` ('base' for no adapter; may be omitted when exactly one adapter is given)."""
    if use is None:
        if len(adapters) > 1:
            raise UserError(
                f"--use: {len(adapters)} adapters are loaded ({', '.join(adapters)}); choose one with --use NAME "
                f"(or --use {BASE} for the base model)"
            )
        use = next(iter(adapters), BASE)
    if use != BASE and use not in adapters:
        raise UserError(f"--use: {use!r} is not a loaded adapter; allowed: {', '.join([*adapters, BASE])}")
    for name, directory in adapters.items():
        if not Path(directory).is_dir():
            raise UserError(f"--adapter {name}={directory}: no such directory")
    model_config = _base_model_config(base)
    if model_config.task not in ("causal_lm", "image_text_to_text"):
        raise UserError(
            f"--base: model.task is {model_config.task!r}; generate needs a causal_lm or image_text_to_text model"
        )
    if images and model_config.task != "image_text_to_text":
        raise UserError(
            "--image: the base is not a vision-language model; pass a config with model.task image_text_to_text"
        )
    if model_config.task == "causal_lm":
        from peft_framework.models.heads import check_head

        check_head(model_config, what="generate", key="--base")
    tokenizer = _tokenizer_for(model_config, list(adapters.values()))
    model = MultiAdapterModel.from_base(model_config, tokenizer=tokenizer)
    for name, directory in adapters.items():
        model.load_adapter(name, directory)
    return model.generate(
        list(prompts),
        adapter=None if use == BASE else use,
        max_new_tokens=max_new_tokens,
        images=list(images) or None,
    )
