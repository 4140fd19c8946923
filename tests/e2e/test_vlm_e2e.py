"""The vision-language demo through `dvc repro` (issue 24): params/vlm.yaml as the experiment, the shapes
that sample-data draws, the tiny VLM's adapter + projector learning the shape's colour (held-out exact
match from the base's to >= 0.9), and an export that transformers loads with its processor."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from pipeline_project import Project, make_project

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
