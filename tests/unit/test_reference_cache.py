"""train.precompute_reference: cached reference log-probs give the same loss as the per-batch reference pass,
are reused on a re-run and recomputed when the reference changes."""

from __future__ import annotations

import functools
from pathlib import Path

import datasets
import torch

from peft_framework.adapters import get_adapter
from peft_framework.training.objectives.base import as_reference
from peft_framework.training.objectives.pairwise import DPO
from peft_framework.training.reference_cache import with_reference_logps
from preference_fixtures import _models, _pair_features


def test_precomputed_reference_is_cached_and_gives_the_same_loss(tmp_path: Path) -> None:
    ours, _, _ = _models()
    method, objective = get_adapter("lora"), DPO(beta=0.1)
    rows = _pair_features(5)
    data = datasets.Dataset.from_list(rows)
    args = dict(
        model=ours, method=method, adapter_name=None, objective=objective, pad_token_id=0, batch_size=2
    )
    identity = {"model": "a", "init_adapter": None}
    first, cached = with_reference_logps(data, "train", key_parts=("sha", identity), root=tmp_path, **args)
    assert not cached
    again, cached = with_reference_logps(data, "train", key_parts=("sha", identity), root=tmp_path, **args)
    assert cached and again["ref_chosen_logps"] == first["ref_chosen_logps"]
    other = {"model": "b", "init_adapter": None}
    _, cached = with_reference_logps(data, "train", key_parts=("sha", other), root=tmp_path, **args)
    assert not cached  # another base: computed again
    assert len(list((tmp_path / ".cache" / "reference_logps").iterdir())) == 2

    reference = functools.partial(as_reference, ours, method, None)
    live, _ = objective.compute_loss(ours, objective.collator(0)(rows), reference)
    batch = objective.collator(0)([dict(r) for r in first])
    assert "ref_chosen_logps" in batch
    precomputed, metrics = objective.compute_loss(ours, batch, None)  # no reference pass at all
    assert torch.allclose(live, precomputed, atol=1e-6)
    assert abs(float(metrics["rewards/margins"])) > 0
