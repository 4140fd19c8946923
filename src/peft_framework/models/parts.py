"""The parts of a model (language model, vision tower, projector), asked once per model kind.

Targeting, the manifest and training ask this module which part a module path belongs to; nothing else
looks for "vision" in module names. Text models are one part, the language model. Vision-language models
(`model.task: image_text_to_text`) are found through transformers' own lookups: `get_encoder(modality=
"image")` for the vision tower, `get_decoder()` for the language model; the projector is the family's
module that maps image features into the language model (`PROJECTOR_NAMES`), which some families keep
inside the vision tower (Qwen2-VL's `visual.merger`): a path belongs to the innermost part that holds it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

LANGUAGE = "language_model"
VISION = "vision_tower"
PROJECTOR = "projector"
OTHER = "other"  # heads and embeddings outside the three parts (lm_head)
PARTS = (LANGUAGE, VISION, PROJECTOR, OTHER)

#: the projector's attribute name per family (LLaVA, Gemma3, Mistral3, PaliGemma: multi_modal_projector;
#: Qwen2-VL/2.5-VL: visual.merger; Idefics3/SmolVLM: connector)
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector", "mm_projector")


@dataclass(frozen=True)
class ModelParts:
    """Module paths (prefixes) of each part; empty for a part the model lacks."""

    language_model: tuple[str, ...]
    vision_tower: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()

    @property
    def multimodal(self) -> bool:
        return bool(self.vision_tower)

    def part_of(self, path: str) -> str:
        """The part `path` belongs to: the innermost one whose prefix holds it."""
        best, depth = OTHER, -1
        for part, prefixes in (
            (LANGUAGE, self.language_model),
            (VISION, self.vision_tower),
            (PROJECTOR, self.projector),
        ):
            for prefix in prefixes:
                if (prefix == "" or path == prefix or path.startswith(prefix + ".")) and len(prefix) > depth:
                    best, depth = part, len(prefix)
        return best

    def count(self, paths: Iterable[str]) -> dict[str, int]:
        """How many of `paths` lie in each part (every part listed, zeros too)."""
        counts = Counter(self.part_of(p) for p in paths)
        return {part: counts.get(part, 0) for part in PARTS}

    def top_level(self) -> dict[str, list[str]]:
        """Part -> its module paths, for error messages."""
        return {
            LANGUAGE: list(self.language_model),
            VISION: list(self.vision_tower),
            PROJECTOR: list(self.projector),
        }


def _path_of(model: nn.Module, module: nn.Module) -> str | None:
    for path, candidate in model.named_modules():
        if candidate is module:
            return path
    return None


def model_parts(model: nn.Module) -> ModelParts:
    """The parts of `model`. A model with no image encoder is all language model."""
    get_encoder = getattr(model, "get_encoder", None)
    vision = None
    if callable(get_encoder):
        try:
            encoder = get_encoder(modality="image")
        except (TypeError, ValueError, AttributeError):
            encoder = None
        if encoder is not None and encoder is not model:
            vision = _path_of(model, encoder)
    if not vision:
        return ModelParts(language_model=("",))
    decoder = model.get_decoder()
    language = _path_of(model, decoder) if decoder is not model else None
    projectors = tuple(
        path
        for path, _ in model.named_modules()
        if path.rsplit(".", 1)[-1] in PROJECTOR_NAMES and not _inside_any(path, PROJECTOR_NAMES)
    )
    return ModelParts(
        language_model=(language,) if language else ("",), vision_tower=(vision,), projector=projectors
    )


def _inside_any(path: str, names: tuple[str, ...]) -> bool:
    """`path` lies inside a module with one of `names` (only the outermost projector counts)."""
    return any(part in names for part in path.split(".")[:-1])


def scoped_targets(
    model: nn.Module,
    targets: list[str],
    target_modules: str | list[str],
    target_vision: bool,
) -> list[str]:
    """`targets` kept where the adapter may go: on a vision-language model, the language model only (a
    bare name such as `q_proj` or 'all-linear' also matches the vision tower's layers), plus the vision
    tower's with `adapter.target_vision`. The projector is trained whole through `modules_to_save`, never
    adapted by a pattern; a full module path named in a list is taken as meant, wherever it is."""
    parts = model_parts(model)
    if not parts.multimodal:
        return targets
    allowed = {LANGUAGE, OTHER} | ({VISION} if target_vision else set())
    named = set(target_modules) if isinstance(target_modules, list) else set()
    return [p for p in targets if p in named or parts.part_of(p) in allowed]
