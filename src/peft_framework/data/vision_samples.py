"""The synthetic image set of `sample-data`: coloured shapes drawn with PIL, and a few broken files.

`vision/shapes.jsonl` asks "What colour is the shape?" about each image in `vision/images/`; the answer is
the shape's colour (4 colours: chance is 0.25). Drawn by code on every run (same seed, same bytes), never
committed as binaries. The defects, one row each, are what `prepare` must account for row by row:
a missing file, a path escaping the data directory, a truncated PNG, bytes that are no image, a
decompression bomb (more pixels than the preset's data.images.max_pixels), an image below min_size,
a placeholder count that differs from the image count, a duplicate image under another name; a CMYK
JPEG and a palette PNG are kept after conversion to RGB.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")
QUESTION = "What colour is the shape?"
SIZE = 32
#: the preset's data.images.max_pixels; the bomb has more
BOMB_SIDE = 1100


def draw_shape(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """A SIZE x SIZE image: light background, one shape of `colour` at a random place and size."""
    grey = rng.randint(200, 255)
    img = Image.new("RGB", (SIZE, SIZE), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    r = rng.randint(7, 12)
    cx, cy = rng.randint(r, SIZE - r), rng.randint(r, SIZE - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def row(image: str | list[str], answer: str, placeholders: int = 1) -> dict[str, Any]:
    user = [{"type": "image"}] * placeholders + [{"type": "text", "text": QUESTION}]
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": image if isinstance(image, list) else [image],
    }


def vision_files(
    rng: random.Random, n_rows: int = 400
) -> tuple[dict[str, bytes], list[dict], dict[str, Any]]:
    """(files by relative path, rows, what prepare must report)."""
    files: dict[str, bytes] = {}
    rows: list[dict] = []
    for i in range(n_rows):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        name = f"images/{i:04d}_{shape}.png"
        files[name] = _png(draw_shape(colour, shape, rng))
        rows.append(row(name, colour))
    good = _png(draw_shape("red", "circle", rng))
    files["images/cmyk.jpg"] = _cmyk_jpeg(draw_shape("blue", "square", rng))
    files["images/palette.png"] = _png(draw_shape("green", "triangle", rng).convert("P"))
    files["images/truncated.png"] = good[: len(good) // 2]
    files["images/not_an_image.png"] = b"this is not an image\n"
    files["images/bomb.png"] = _png(Image.new("L", (BOMB_SIDE, BOMB_SIDE)))
    files["images/tiny.png"] = _png(Image.new("RGB", (4, 4), COLOURS["red"]))
    defects = [
        (row("images/cmyk.jpg", "blue"), None),
        (row("images/palette.png", "green"), None),
        (row("images/missing.png", "red"), "image_missing"),
        (row("../outside.png", "red"), "image_path_escapes"),
        (row("images/truncated.png", "red"), "image_unreadable"),
        (row("images/not_an_image.png", "red"), "image_unreadable"),
        (row("images/bomb.png", "red"), "image_too_large"),
        (row("images/tiny.png", "red"), "image_too_small"),
        (
            row(["images/0000_" + rows[0]["images"][0].split("_", 1)[1]], "red", placeholders=2),
            "image_count_mismatch",
        ),
        (dict(rows[1], images=["images/copy_of_0001.png"]), "duplicate_exact"),
    ]
    files["images/copy_of_0001.png"] = files[rows[1]["images"][0]]
    for defect, _ in defects:
        rows.insert(rng.randint(2, len(rows)), defect)
    rejected: dict[str, int] = {}
    for _, reason in defects:
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
    expected = {"read": len(rows), "rejected_by_reason": rejected, "image_mode_converted": 2}
    return files, rows, expected


def _cmyk_jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.convert("CMYK").save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_vision_samples(out_dir: Path, write_bytes, seed: int) -> dict[str, Any]:
    """Write `vision/shapes.jsonl` and its images under `out_dir` with `write_bytes(path, data)`."""
    files, rows, expected = vision_files(random.Random(f"{seed}:vision"))
    base = out_dir / "vision"
    for name, data in files.items():
        write_bytes(base / name, data)
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    path = base / "shapes.jsonl"
    write_bytes(path, data)
    return {
        "path": str(path),
        "bytes": len(data),
        "lines": len(rows),
        "images": len(files),
        "expected": expected,
    }
