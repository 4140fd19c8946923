"""Prefect flows: the full pipeline (flows.pipeline), one stage (flows.stage, the dvc.yaml commands) and
a long-running server of the scheduled deployment (flows.serve)."""

import tasks  # noqa: F401  -- first: applies the project's Prefect settings before Prefect is imported
