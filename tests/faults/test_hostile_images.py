"""Hostile images in vision rows (docs/faults.md, "an input is hostile"): a decompression bomb is refused
from its header without being decoded, and paths (or symlinks) out of the data directory are not read."""

from __future__ import annotations

import io
import os
import tracemalloc

from PIL import Image

from peft_framework.config.schema import DataConfig
from peft_framework.data import vision

CFG = DataConfig(kind="vision", images={"max_pixels": 1_000_000})


def _row(image) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": "x"},
        ],
        "images": [image],
    }


def test_a_bomb_is_rejected_from_its_header_without_decoding():
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")  # 400 Mpixels, ~50 KB on disk
    tracemalloc.start()
    fields, problems, _ = vision.vision_fields(_row(out.getvalue()), CFG, None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert fields is None and problems[0][0] == vision.IMAGE_TOO_LARGE
    assert peak < 20 * 2**20  # decoding it as RGB would take 1.2 GB
    assert Image.MAX_IMAGE_PIXELS is not None


def test_paths_and_symlinks_out_of_the_data_directory_are_not_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(secret)
    os.symlink(secret, data / "link.png")
    for value in ("../secret.png", "link.png", str(secret)):
        fields, problems, _ = vision.vision_fields(_row(value), CFG, data)
        assert fields is None and problems[0][0] == vision.IMAGE_PATH_ESCAPES, value
