"""One pipeline stage as a Prefect flow: the command each dvc.yaml stage runs.

    python -m flows.stage {sample_data,prepare,train,evaluate,export} [--config params.yaml] [KEY=VALUE ...]

The stage is the same cached task the full pipeline runs, so `dvc repro` and `flows.pipeline` share one
result cache, and stage runs show up in the Prefect UI when PREFECT_API_URL points at a server.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import flows  # noqa: F401  # isort: skip -- applies the project's Prefect settings before Prefect is imported

if __name__ == "__main__":  # the command: in the warm runner if one serves (tasks/warm.py), else here,
    from tasks import warm  # with the local Prefect API booting while this process imports Prefect
    from tasks.local_api import prestart

    warm.forward("flows.stage")
    prestart()

from prefect import flow  # noqa: E402
from prefect.states import State  # noqa: E402
from tasks.stages import ORDER  # noqa: E402

from flows._run import cli, load_in_flow, run_stages  # noqa: E402


@flow(name="peft-stage", flow_run_name="{stage}", description="One pipeline stage (a dvc.yaml command)")
def stage_flow(
    stage: str, config_path: str = "params.yaml", overrides: list[str] | None = None, root: str = "."
) -> dict[str, Any] | State[Any]:
    config, root_path = load_in_flow(config_path, overrides, root)
    return run_stages([stage], config, root_path)


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("stage", choices=ORDER)

    def run(args: argparse.Namespace) -> State[Any]:
        return stage_flow(
            stage=args.stage,
            config_path=args.config,
            overrides=args.overrides,
            root=args.root,
            return_state=True,
        )

    return cli("python -m flows.stage", "Run one pipeline stage as a Prefect flow.", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
