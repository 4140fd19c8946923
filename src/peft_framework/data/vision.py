"""data.kind vision: chat rows whose messages hold `{"type": "image"}` parts, with an `images` column.

Each image is a path (relative to the data file's directory, never outside it), image bytes, or a
`datasets` Image value ({"bytes": ..., "path": ...}). Every image is opened and fully decoded once here,
so a row is kept only with images the collator can read; the checks, in order, each a rejection reason:
missing file, path escaping the data directory, unreadable or truncated file, more pixels than
`data.images.max_pixels` (checked from the header before decoding; PIL's own bomb guard stays on),
smaller than `data.images.min_size`, and placeholders != images. Other modes than RGB (CMYK, P, LA,
16-bit) are converted to RGB and counted as a fix (`image_mode_converted`).

The prepared data keeps each image's bytes (the file's own, or PNG after a mode conversion) and sha256,
never pixel values: the processor turns them into pixels per batch, in the collator.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from peft_framework.config.schema import DataConfig
from peft_framework.data.clean import clean_text
from peft_framework.data.rows import Reason
from peft_framework.data.validate import _describe, _normalize_role, check_roles

Problem = tuple[str, str]

#: reasons of this data kind (rejected.jsonl and the report)
IMAGE_MISSING = "image_missing"
IMAGE_PATH_ESCAPES = "image_path_escapes"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TOO_SMALL = "image_too_small"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
MODE_CONVERTED = "image_mode_converted"


def _parts(content: Any, where: str, problems: list[Problem]) -> list[dict[str, str]] | None:
    """Content as a list of parts ({type: text, text} or {type: image}); a string is one text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        problems.append(
            (
                Reason.WRONG_TYPE,
                f"{where}: content must be a string or a list of parts, got {_describe(content)}",
            )
        )
        return None
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append({"type": "image"})
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            problems.append(
                (
                    Reason.WRONG_TYPE,
                    f"{where}: part {j} must be {{type: text, text: ...}} or {{type: image}}, got {_describe(part)}",
                )
            )
            return None
    return parts


def message_text(content: list[dict[str, str]] | str) -> str:
    """The text of a message (its text parts joined)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p["type"] == "text")


def _image_problem(img: Image.Image, cfg: DataConfig) -> Problem | None:
    w, h = img.size
    if w * h > cfg.images.max_pixels:
        return IMAGE_TOO_LARGE, f"{w}x{h} = {w * h} pixels, data.images.max_pixels is {cfg.images.max_pixels}"
    if min(w, h) < cfg.images.min_size:
        return IMAGE_TOO_SMALL, f"{w}x{h}, data.images.min_size is {cfg.images.min_size}"
    return None


def load_image(
    value: Any, base_dir: Path | None, cfg: DataConfig, where: str
) -> tuple[dict[str, Any] | None, Problem | None, bool]:
    """(stored image, problem, converted): the image's bytes (base64 in JSON), sha256 and size, verified."""
    path = None
    if isinstance(value, dict):  # a datasets Image value
        data, path = value.get("bytes"), value.get("path")
        value = data if data is not None else path
    if isinstance(value, str):
        if base_dir is None:
            return (
                None,
                (IMAGE_MISSING, f"{where}: image path {value!r} but the source is no local file"),
                False,
            )
        base = base_dir.resolve()
        target = (base / value).resolve()
        if not target.is_relative_to(base):
            return (
                None,
                (IMAGE_PATH_ESCAPES, f"{where}: {value!r} lies outside the data directory {base}"),
                False,
            )
        if not target.is_file():
            return None, (IMAGE_MISSING, f"{where}: {value!r} does not exist"), False
        raw = target.read_bytes()
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        return (
            None,
            (Reason.WRONG_TYPE, f"{where}: an image must be a path or bytes, got {_describe(value)}"),
            False,
        )
    try:
        with Image.open(io.BytesIO(raw)) as img:
            problem = _image_problem(img, cfg)  # from the header: a bomb is never decoded
            if problem is not None:
                return None, (problem[0], f"{where}: {problem[1]}"), False
            img.load()
            converted = img.mode != "RGB"
            if converted:
                out = io.BytesIO()
                img.convert("RGB").save(out, format="PNG")
                stored = out.getvalue()
            else:
                stored = raw
            size = img.size
    except Image.DecompressionBombError as exc:
        return None, (IMAGE_TOO_LARGE, f"{where}: {exc}"), False
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = "not an image PIL can identify" if isinstance(exc, UnidentifiedImageError) else f"{exc}"
        return None, (IMAGE_UNREADABLE, f"{where}: {detail} ({type(exc).__name__})"), False
    image = {
        "bytes": base64.b64encode(stored).decode("ascii"),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "width": size[0],
        "height": size[1],
    }
    return image, None, converted


def vision_fields(
    data: dict, cfg: DataConfig, base_dir: Path | None
) -> tuple[dict[str, Any] | None, list[Problem], set[str]]:
    """Canonical fields of a vision row (messages with parts, verified images), or None with its problems;
    and the fixes applied (mode conversions)."""
    problems: list[Problem] = []
    col = cfg.columns.get
    raw_messages = data.get(col("messages", "messages"))
    if not isinstance(raw_messages, list) or not raw_messages:
        problems.append(
            (
                Reason.MISSING_FIELD,
                f"field 'messages' must be a non-empty list, got {_describe(raw_messages)}",
            )
        )
        return None, problems, set()
    role_key, content_key = col("role", "role"), col("content", "content")
    messages = []
    for i, msg in enumerate(raw_messages):
        if not isinstance(msg, dict) or not isinstance(msg.get(role_key), str):
            problems.append((Reason.WRONG_TYPE, f"message {i} must be an object with a string {role_key!r}"))
            continue
        parts = _parts(msg.get(content_key), f"message {i}", problems)
        if parts is not None:
            messages.append({"role": _normalize_role(msg[role_key], cfg), "content": parts})
    if problems:
        return None, problems, set()
    problems += check_roles(messages, cfg.validate_.allowed_roles)
    images_value = data.get(col("images", "images"))
    if images_value is None:
        images_value = []
    if not isinstance(images_value, list):
        images_value = [images_value]
    placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
    if placeholders != len(images_value):
        problems.append(
            (
                IMAGE_COUNT_MISMATCH,
                f"{placeholders} image placeholders in the messages but {len(images_value)} images",
            )
        )
    if problems:
        return None, problems, set()
    images, fixes = [], set()
    for k, value in enumerate(images_value):
        image, problem, converted = load_image(value, base_dir, cfg, f"image {k}")
        if problem is not None:
            return None, [problem], set()
        images.append(image)
        if converted:
            fixes.add(MODE_CONVERTED)
    return {"messages": messages, "images": images}, [], fixes


def clean_messages(messages: list[dict[str, Any]], cfg: DataConfig, changed: set[str]) -> list[Problem]:
    """Clean every text part in place; empty non-system turns without an image are problems."""
    problems = []
    for i, m in enumerate(messages):
        for part in m["content"]:
            if part["type"] == "text":
                part["text"], steps = clean_text(part["text"], cfg.clean)
                changed.update(steps)
        empty = not message_text(m["content"]).strip() and not any(p["type"] == "image" for p in m["content"])
        if cfg.clean.drop_empty and empty and m["role"] != "system":
            problems.append((Reason.EMPTY_FIELD, f"message {i} ({m['role']}) is empty"))
    return problems


def text_values(fields: dict[str, Any]) -> list[str]:
    """What de-duplication compares: roles, texts, image placements and the images' content hashes."""
    values = []
    for m in fields["messages"]:
        values.append(m["role"])
        values += [p["text"] if p["type"] == "text" else "\0image" for p in m["content"]]
    return values + [img["sha256"] for img in fields["images"]]


def prompt_values(fields: dict[str, Any]) -> list[str]:
    """The input side (all but the last turn, and the images): rows sharing it share a split."""
    values = []
    for m in fields["messages"][:-1]:
        values.append(m["role"])
        values += [p["text"] if p["type"] == "text" else "\0image" for p in m["content"]]
    return values + [img["sha256"] for img in fields["images"]]


def json_safe(value: Any) -> Any:
    """`value` with image bytes replaced by their size and sha256 (rows are kept as JSON in the rejected
    file and the work files; the prepared data holds the verified bytes themselves)."""
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
