"""data.kind vision, row by row: each image defect its own reason, other modes converted to RGB and
counted, PIL's decompression-bomb guard left on, de-duplication on the images' content."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from peft_framework.config.schema import DataConfig
from peft_framework.data import vision
from peft_framework.data.pipeline import row_keys

CFG = DataConfig(kind="vision", images={"max_pixels": 10_000, "min_size": 8})


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def row(images, placeholders: int = 1) -> dict:
    user = [{"type": "image"}] * placeholders + [{"type": "text", "text": "colour?"}]
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "red"}],
        "images": images,
    }


@pytest.mark.parametrize(
    "image",
    [
        Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
        Image.new("P", (16, 16)),
        Image.new("LA", (16, 16), (100, 255)),
        Image.new("I;16", (16, 16)),
    ],
)
def test_other_modes_are_converted_to_rgb_and_counted(image):
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    fields, problems, fixes = vision.vision_fields(row([png(image, fmt)]), CFG, None)
    assert not problems and fixes == {vision.MODE_CONVERTED}
    with Image.open(io.BytesIO(base64.b64decode(fields["images"][0]["bytes"]))) as stored:
        assert stored.mode == "RGB"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("missing.png", vision.IMAGE_MISSING),
        ("../escape.png", vision.IMAGE_PATH_ESCAPES),
        (b"not an image", vision.IMAGE_UNREADABLE),
        (png(Image.new("RGB", (64, 64)))[:60], vision.IMAGE_UNREADABLE),
        (png(Image.new("L", (200, 200))), vision.IMAGE_TOO_LARGE),
        (png(Image.new("RGB", (4, 40))), vision.IMAGE_TOO_SMALL),
    ],
)
def test_each_defect_is_its_own_reason(tmp_path, value, reason):
    (tmp_path.parent / "escape.png").write_bytes(png(Image.new("RGB", (16, 16))))
    fields, problems, _ = vision.vision_fields(row([value]), CFG, tmp_path)
    assert fields is None and [r for r, _ in problems] == [reason]


def test_placeholders_must_match_images():
    fields, problems, _ = vision.vision_fields(
        row([png(Image.new("RGB", (16, 16)))], placeholders=2), CFG, None
    )
    assert fields is None and problems[0][0] == vision.IMAGE_COUNT_MISMATCH


def test_pil_bomb_guard_stays_on():
    assert Image.MAX_IMAGE_PIXELS is not None


def test_duplicates_are_judged_on_image_content():
    red, blue = (png(Image.new("RGB", (16, 16), c)) for c in ((255, 0, 0), (0, 0, 255)))
    keys = [row_keys(vision.vision_fields(row([img]), CFG, None)[0], CFG)[0] for img in (red, red, blue)]
    assert keys[0] == keys[1] != keys[2]


def test_mapped_columns_and_image_bytes_from_parquet(tmp_path):
    """Rows from Parquet with other column names: image bytes are read, and kept out of report JSON."""
    import datasets

    from peft_framework.data.sources import read_source, resolve_sources

    good = png(Image.new("RGB", (16, 16), (255, 0, 0)))
    data = row([good])
    data["messages"][1]["content"] = [{"type": "text", "text": "red"}]  # Arrow: one type per column
    datasets.Dataset.from_list([{"conversation": data["messages"], "pictures": [good]}]).to_parquet(
        tmp_path / "rows.parquet"
    )
    cfg = DataConfig(
        kind="vision",
        source=str(tmp_path / "rows.parquet"),
        columns={"messages": "conversation", "images": "pictures"},
    )
    (record,) = [
        r for src in resolve_sources(cfg.source, "auto", tmp_path) for r in read_source(src, "train", None)
    ]
    fields, problems, _ = vision.vision_fields(record.data, cfg, tmp_path)
    assert not problems and fields["images"][0]["width"] == 16
    safe = vision.json_safe(record.data)
    assert safe["pictures"][0]["bytes"] == len(good)
