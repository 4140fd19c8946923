"""Vision rows through prepare and train on the tiny VLM: the dirty image set accounted for row by row,
no pixel values on disk, the processor per batch, the projector trained through modules_to_save and a
frozen vision tower; packing refused; a changed image changes the prepared data's hash."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from peft_framework.config.loading import load_config
from peft_framework.data import prepare, write_samples
from peft_framework.errors import UserError
from peft_framework.models.tiny_vlm import save_tiny_vlm
from peft_framework.training.stage import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO_VLM = Path(__file__).resolve().parents[2] / "params" / "vlm.yaml"

PRESET = """
model: {{name_or_path: {model}, task: image_text_to_text}}
data:
  source: data/raw/vision/shapes.jsonl
  kind: vision
  images: {{max_pixels: 1000000}}
adapter: {{type: lora, r: 4, alpha: 8, modules_to_save: [multi_modal_projector]}}
train: {{max_steps: 3, batch_size: 4, report_to: none}}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("vision")
    summary = write_samples(root / "data" / "raw")["vision/shapes.jsonl"]
    (root / "vlm.yaml").write_text(PRESET.format(model="builtin:tiny-vlm"))
    return root, summary


@pytest.fixture(scope="module")
def prepared(project):
    root, _ = project
    return prepare(load_config(root / "vlm.yaml"), root)


def test_dirty_images_accounted_row_by_row(project, prepared):
    root, summary = project
    expected = summary["expected"]
    assert prepared["rows"]["read"] == expected["read"]
    assert prepared["rejected_by_reason"] == dict(sorted(expected["rejected_by_reason"].items()))
    assert prepared["rows"]["kept"] + prepared["rows"]["rejected"] == prepared["rows"]["read"]
    report = json.loads((root / "data/prepared/report.json").read_text())
    assert report["cleaned"]["image_mode_converted"] == expected["image_mode_converted"]
    rejected = [json.loads(line) for line in (root / "data/rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == prepared["rows"]["rejected"]
    assert all(r["details"] and r["line"] for r in rejected)


def test_prepared_rows_hold_image_bytes_not_pixels(prepared):
    ds = datasets.load_from_disk(prepared["output_dir"])
    assert "pixel_values" not in ds["train"].column_names
    row = ds["train"][0]
    with Image.open(io.BytesIO(row["images"][0]["bytes"])) as img:
        assert img.mode == "RGB"
    assert len(row["images"][0]["sha256"]) == 64


def test_inspect_data_shows_each_image_with_size_and_hash(project, prepared):
    from peft_framework.inspect_data import inspect_data

    root, _ = project
    out = io.StringIO()
    inspect_data(load_config(root / "vlm.yaml"), root, rows=2, out=out, colour=False)
    text = out.getvalue()
    assert text.count("image 0: 32x32") == 2 and "sha256 " in text and "<image>" in text
    assert "image_count_mismatch" in text


def test_a_changed_image_changes_the_prepared_hash(project, prepared, tmp_path):
    import shutil

    root, _ = project
    copy = tmp_path / "p"
    shutil.copytree(root / "data" / "raw", copy / "data" / "raw")
    shutil.copy(root / "vlm.yaml", copy / "vlm.yaml")
    first = next(p for p in sorted((copy / "data/raw/vision/images").glob("0*.png")))
    Image.new("RGB", (32, 32), (1, 2, 3)).save(first)
    again = prepare(load_config(copy / "vlm.yaml"), copy)
    assert again["dataset_sha256"] != prepared["dataset_sha256"]


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_train_on_images(project, prepared, family, tmp_path):
    root, _ = project
    model_dir = save_tiny_vlm(family, tmp_path / family)
    overrides = [f"model.name_or_path={model_dir}", f"train.output_dir={tmp_path}/adapter"]
    if family != "llava":  # each family's data is prepared with its own processor
        overrides += [
            f"data.output_dir={tmp_path}/prepared",
            f"data.rejected_path={tmp_path}/rejected.jsonl",
            f"data.report_path={tmp_path}/data.json",
        ]
    config = load_config(root / "vlm.yaml", overrides)
    if family != "llava":
        prepare(config, root)
    summary = train(config, root)
    assert summary["global_step"] == 3
    manifest = json.loads((tmp_path / "adapter" / "manifest.json").read_text())
    adapter = manifest["adapter"]
    assert adapter["layers_per_part"]["language_model"] > 0
    assert adapter["layers_per_part"]["vision_tower"] == adapter["layers_per_part"]["projector"] == 0
    assert adapter["modules_to_save_per_part"]["projector"] == 1

    # evaluate: base vs adapter loss and answers on the held-out image prompts, predictions with image hashes
    from peft_framework.evaluation.stage import evaluate

    scored = [
        f"eval.report_path={tmp_path}/eval.json",
        f"eval.predictions_path={tmp_path}/predictions.jsonl",
        f"eval.plots_dir={tmp_path}/plots",
        "eval.max_samples=4",
        "eval.max_new_tokens=3",
    ]
    metrics = evaluate(load_config(root / "vlm.yaml", [*overrides, *scored]), root)["metrics"]
    assert {"base.loss", "adapter.loss", "base.exact_match", "adapter.exact_match"} <= set(metrics)
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["images"][0]) == 64 for r in rows)

    # generation on an image prompt through MultiAdapterModel (what `generate --image PATH` runs)
    from peft_framework.inference import MultiAdapterModel

    multi = MultiAdapterModel.from_base(config.model)
    multi.load_adapter("shapes", tmp_path / "adapter")
    image = next((root / "data/raw/vision/images").glob("0*.png"))
    answers = multi.generate(
        ["What colour is the shape?"] * 2, adapter="shapes", images=[image], max_new_tokens=3
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    # export: the merged VLM with its processor files, loaded by the Auto classes, parity on image rows
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from peft_framework.export.stage import export

    exported = [f"export.output_dir={tmp_path}/merged", f"export.report_path={tmp_path}/export.json"]
    report = export(load_config(root / "vlm.yaml", [*overrides, *exported]), root)
    assert report["parity_passed"] and report["parity_samples"] > 0
    assert (tmp_path / "merged" / "chat_template.jinja").is_file()
    processor = AutoProcessor.from_pretrained(tmp_path / "merged")
    assert processor.image_processor is not None and processor.tokenizer.chat_template
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()

    # peft interop on what training wrote: PeftModel on the base gives the merged model's logits
    import peft
    import torch

    adapted = peft.PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(model_dir), tmp_path / "adapter"
    ).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(images=[[Image.open(image).convert("RGB")]], text=[text], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapted(**batch).logits, merged(**batch).logits, atol=1e-4, rtol=1e-4)


def test_builtin_models_fit_their_task():
    from peft_framework.config.schema import ModelConfig
    from peft_framework.errors import ConfigError
    from peft_framework.models.loading import load_base_model

    with pytest.raises(ConfigError, match="builtin:tiny-llama"):
        load_base_model(ModelConfig(name_or_path="builtin:tiny-vlm", task="causal_lm"))
    with pytest.raises(ConfigError, match="does not fit"):
        prepare(load_config(REPO_VLM, ["model.task=causal_lm", "model.name_or_path=builtin:tiny-llama"]), ".")


def test_packing_image_rows_is_refused(project, prepared):
    root, _ = project
    with pytest.raises(UserError, match="train.packing"):
        train(load_config(root / "vlm.yaml", ["train.packing=true"]), root)
