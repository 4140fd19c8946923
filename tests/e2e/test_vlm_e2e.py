"""The vision-language demo through `dvc repro` (issue 24): params/vlm.yaml as the experiment, the shapes
that sample-data draws, the tiny VLM's adapter + projector learning the shape's colour (held-out exact
match from the base's to >= 0.9), and an export that transformers loads with its processor.

Then the second family (Gemma3: SigLIP tower, `builtin:tiny-vlm-gemma3`) through the same stages with one
`-S model.name_or_path=...` override, on a few steps: prepare with its processor, train, evaluate, export
with parity on image rows, and an adapter that peft loads on the Gemma3 base."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from PIL import Image
from pipeline_project import Project, make_project, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("vlm-project"), params={})
    shutil.copy2(project.root / "params" / "vlm.yaml", project.root / "params.yaml")
    project.run("git", "commit", "-qam", "vlm preset as the experiment")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def test_dvc_repro_teaches_the_tiny_vlm_the_shape_colour(project: Project):
    project.run("dvc", "repro", timeout=900)
    root = project.root
    data = json.loads((root / "data/prepared/report.json").read_text())
    assert (
        data["rejected_by_reason"]["image_unreadable"] == 2 and data["cleaned"]["image_mode_converted"] == 2
    )
    report = json.loads((root / "reports/eval.json").read_text())
    assert report["adapter.exact_match"] >= 0.9 > report["base.exact_match"]
    predictions = [
        json.loads(line) for line in (root / "reports/eval_predictions.jsonl").read_text().splitlines()
    ]
    assert all(len(p["images"]) == 1 for p in predictions)
    export = json.loads((root / "reports/export.json").read_text())
    assert export["parity_passed"] == 1
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert AutoProcessor.from_pretrained(root / "models/merged").image_processor is not None
    AutoModelForImageTextToText.from_pretrained(root / "models/merged")


GEMMA3 = "builtin:tiny-vlm-gemma3"


def test_second_family_goes_through_the_stages_with_one_override(project: Project):
    import peft
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from peft_framework.models.tiny_vlm import tiny_vlm

    short = ["train.max_steps=2", "eval.max_samples=4", "eval.max_new_tokens=2", "export.parity_samples=2"]
    overrides = [f"model.name_or_path={GEMMA3}", *short]
    proc = project.run("dvc", "exp", "run", *[a for o in overrides for a in ("-S", o)], timeout=600)
    assert {"prepare", "train", "evaluate", "export"} <= set(stages_run(proc.stdout)), proc.stdout
    root = project.root
    manifest = json.loads((root / "models/adapter/manifest.json").read_text())
    parts = manifest["adapter"]["layers_per_part"]
    assert parts["language_model"] > 0 and parts["vision_tower"] == parts["projector"] == 0
    report = json.loads((root / "reports/eval.json").read_text())
    assert {"base.loss", "adapter.loss", "adapter.exact_match"} <= set(report)
    assert json.loads((root / "reports/export.json").read_text())["parity_passed"] == 1
    merged = AutoModelForImageTextToText.from_pretrained(root / "models/merged").eval()
    assert type(merged).__name__ == "Gemma3ForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(root / "models/merged")
    # peft loads the trained adapter on the Gemma3 base; its logits on an image prompt are the merged model's
    adapted = peft.PeftModel.from_pretrained(tiny_vlm("gemma3")[0], root / "models/adapter").eval()
    image = Image.open(next((root / "data/raw/vision/images").glob("0*.png"))).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(images=[[image]], text=[text], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(adapted(**batch).logits, merged(**batch).logits, atol=1e-4, rtol=1e-4)
