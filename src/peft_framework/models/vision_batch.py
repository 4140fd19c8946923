"""Batches of prepared vision rows (the model kind image_text_to_text): the processor runs here, per
batch, never in prepare. Used by train (the collator), evaluate and export (the parity batch).

The prepared row holds the rendered conversation (`text`), its token layout (`input_ids`, `labels`, one
placeholder per image) and the images' bytes. The processor tokenizes the text with the images, which
expands each placeholder into the image's tokens, and makes `pixel_values` (and what else the family
needs: `image_grid_thw`, `token_type_ids`, ...). Labels come from the prepared layout: the tokens after the
last image are the same in both, so the prepared labels of that tail carry over and every token before
it (the prompt, image tokens included) is -100, as is padding.

Why image tokens are masked although TRL's collator leaves them in the labels: they are inputs replaced by
vision features, not text the model could predict; their "targets" are one placeholder id repeated, so a
loss on them trains the language model to emit image tokens and dilutes the loss on the answer. Packing of
image rows is refused (train.packing), as axolotl does: rows would need per-row isolation of both the
attention and the image features, which is not built.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import torch
from PIL import Image

from peft_framework.errors import DataError

IGNORE_INDEX = -100
VISION_COLUMNS = ("text", "images")


def decode_image(stored: dict[str, Any]) -> Image.Image:
    """A prepared image (bytes, or base64 text) as an RGB PIL image."""
    data = stored["bytes"]
    if isinstance(data, str):
        data = base64.b64decode(data)
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class VisionCollator:
    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.processor.tokenizer.padding_side = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [f["text"] for f in features]
        images = [[decode_image(img) for img in f["images"]] for f in features]
        kwargs: dict[str, Any] = {}
        if any(images):
            kwargs["images"] = images
        batch = self.processor(
            text=texts, padding=True, add_special_tokens=False, return_tensors="pt", **kwargs
        )
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for i, f in enumerate(features):
            labels[i] = self._row_labels(batch["input_ids"][i], batch["attention_mask"][i], f, i)
        batch["labels"] = labels
        return dict(batch)

    def _row_labels(
        self, ids: torch.Tensor, mask: torch.Tensor, feature: dict[str, Any], i: int
    ) -> torch.Tensor:
        prepared_ids, prepared_labels = list(feature["input_ids"]), list(feature["labels"])
        trained = [k for k, lab in enumerate(prepared_labels) if lab != IGNORE_INDEX]
        out = torch.full_like(ids, IGNORE_INDEX)
        if not trained:
            return out
        tail = len(prepared_ids) - trained[0]  # from the first trained token to the end
        length = int(mask.sum())
        start = length - tail
        if start < 0 or ids[start:length].tolist() != prepared_ids[-tail:]:
            raise DataError(
                f"batch row {i}: the processor's tokens of the answer differ from the prepared ones; re-run "
                "prepare with this model's processor (its tokenizer or chat template changed)"
            )
        out[start:length] = torch.as_tensor(prepared_labels[-tail:], dtype=out.dtype)
        return out
