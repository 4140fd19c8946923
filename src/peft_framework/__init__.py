"""peft-framework: configuration-driven parameter-efficient fine-tuning.

The library layer: no Prefect, no DVC. Pipelines live in `tasks/`, `flows/` and `dvc.yaml`.
"""

__version__ = "0.1.0"
