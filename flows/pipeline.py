"""The full pipeline as one Prefect flow: sample_data -> prepare -> train -> evaluate -> export -> promote,
the stages of dvc.yaml (`PIPELINE`), so the scheduled `nightly` deployment gates like `dvc repro` does.

    python -m flows.pipeline [--config params.yaml] [KEY=VALUE ...]

Runs on Prefect's ephemeral local API, or against a server when PREFECT_API_URL is set. Every stage is
a cached task (tasks/cache.py): a second run with unchanged inputs is all cache hits, and a stage whose
recorded outputs were deleted or changed runs again; the promotion gate (decides, registers nothing) runs
every time. The flow publishes the data report, the eval table
(base vs adapter) and the export parity as artifacts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import flows  # noqa: F401  # isort: skip -- applies the project's Prefect settings before Prefect is imported

if __name__ == "__main__":  # the command: in the warm runner if one serves (tasks/warm.py), else here,
    from tasks import warm  # with the local Prefect API booting while this process imports Prefect
    from tasks.local_api import prestart

    warm.forward("flows.pipeline")
    prestart()

from prefect import flow  # noqa: E402
from prefect.states import State  # noqa: E402
from tasks.stages import ORDER  # noqa: E402

from flows._run import cli, load_in_flow, run_promote, run_stages  # noqa: E402

PIPELINE: tuple[str, ...] = (*ORDER, "promote")
"""What the flow runs, in order: the stage tasks, then the promotion gate (dvc.yaml's stages)."""


@flow(
    name="peft-pipeline", description="prepare -> train -> evaluate -> export (cached by content) -> promote"
)
def pipeline(
    config_path: str = "params.yaml",
    overrides: list[str] | None = None,
    root: str = ".",
    sample_data: bool = True,
) -> dict[str, Any] | State[Any]:
    """Run every stage on the config at `config_path` (relative to `root`) with dotted overrides.

    `sample_data`: generate the bundled sample raw data first (turn off when data.source is your data).
    """
    config, root_path = load_in_flow(config_path, overrides, root)
    names = ORDER if sample_data else tuple(n for n in ORDER if n != "sample_data")
    results = run_stages(names, config, root_path)
    if isinstance(results, State):
        return results
    return run_promote(results, config, root_path)


def main(argv: list[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--no-sample-data",
            action="store_true",
            help="skip generating the sample raw data (bring your own)",
        )

    def run(args: argparse.Namespace) -> State[Any]:
        return pipeline(
            config_path=args.config,
            overrides=args.overrides,
            root=args.root,
            sample_data=not args.no_sample_data,
            return_state=True,
        )

    return cli(
        "python -m flows.pipeline", "Run the whole pipeline as a Prefect flow.", add_arguments, run, argv
    )


if __name__ == "__main__":
    sys.exit(main())
