"""Serve the scheduled pipeline deployment from this process, no work pool needed.

    python -m flows.serve [--deployment nightly]

Reads the deployment (name, cron schedule, parameters) from prefect.yaml, so `prefect deploy` and this
entry point schedule the same thing. Needs a Prefect server: start one with `prefect server start` and
set PREFECT_API_URL. Stop with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

import flows  # noqa: F401  # isort: skip -- applies the project's Prefect settings before Prefect is imported
from prefect.schedules import Cron
from tasks.settings import ROOT

from flows.pipeline import pipeline

PREFECT_YAML = ROOT / "prefect.yaml"


def deployment_spec(name: str, path: Path = PREFECT_YAML) -> dict[str, Any]:
    """The deployment called `name` in prefect.yaml."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for deployment in spec.get("deployments") or []:
        if deployment.get("name") == name:
            return deployment
    names = [d.get("name") for d in spec.get("deployments") or []]
    raise SystemExit(f"error: no deployment {name!r} in {path}; defined: {names}")


def schedules(spec: dict[str, Any]) -> list[Cron]:
    return [
        Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
        for s in spec.get("schedules") or []
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the pipeline deployment defined in prefect.yaml.")
    parser.add_argument("--deployment", default="nightly", help="deployment name in prefect.yaml")
    args = parser.parse_args(argv)
    spec = deployment_spec(args.deployment)
    pipeline.serve(
        name=spec["name"],
        schedules=schedules(spec),
        parameters=spec.get("parameters") or {},
        description=spec.get("description"),
        tags=spec.get("tags"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
