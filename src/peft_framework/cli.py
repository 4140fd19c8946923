"""`peft-framework ...`: check and render configs, list adapter types, run single stages, generate text.

User mistakes (any `UserError`) print `error: <message>` to stderr, no traceback, and exit with the
error's code (2). Stage modules are imported inside their commands so that `validate` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from peft_framework import __version__
from peft_framework.errors import UserError

STAGES: dict[str, tuple[str, str, str]] = {
    # command: (module, function, help)
    "prepare": ("peft_framework.data", "prepare", "clean, validate, split and tokenize the data (data.*)"),
    "train": ("peft_framework.training", "train", "train the adapter (adapter.*, train.*)"),
    "evaluate": (
        "peft_framework.evaluation",
        "evaluate",
        "evaluate base vs adapter on the test split (eval.*)",
    ),
    "harness": (
        "peft_framework.evaluation",
        "harness",
        "lm-evaluation-harness benchmarks on base vs adapter (eval.harness.*)",
    ),
    "export": ("peft_framework.export", "export", "merge the adapter and export a loadable model (export.*)"),
}


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _load(args: argparse.Namespace) -> Any:
    """Load CONFIG + overrides; warnings are printed once each as `warning: ...` lines on stderr."""
    from peft_framework.config import ConfigWarning, load_config_with_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        config, warns = load_config_with_warnings(args.config, args.overrides)
    for line in dict.fromkeys(warns):
        print(f"warning: {line}", file=sys.stderr)
    return config


# ------------------------------------------------------------------------------------------ commands
def cmd_validate(args: argparse.Namespace) -> int:
    from peft_framework.config import SECTIONS, config_hash, section_hash

    config = _load(args)
    print(f"OK {config_hash(config)}")
    if args.hashes:
        for name in SECTIONS:
            print(f"{name:8} {section_hash(config, name)}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from peft_framework.config import to_yaml

    sys.stdout.write(to_yaml(_load(args)))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from peft_framework.config import json_schema

    _print_json(json_schema())
    return 0


def adapter_rows() -> list[dict[str, Any]]:
    """One row per installed adapter type; a plug-in that fails to import is listed with its error."""
    from peft_framework.adapters import registry

    rows = []
    for name, source in registry.available().items():
        try:
            method = registry.get(name)
        except Exception as exc:  # noqa: BLE001 - show broken plug-ins instead of hiding them
            rows.append(
                {
                    "type": name,
                    "peft_type": None,
                    "mergeable": None,
                    "origin": source.origin,
                    "description": f"failed to load {source.target}: {type(exc).__name__}: {exc}",
                }
            )
            continue
        rows.append(
            {
                "type": name,
                "peft_type": method.peft_type,
                "mergeable": method.mergeable,
                "origin": source.origin,
                "description": method.description,
            }
        )
    return rows


def cmd_adapters(args: argparse.Namespace) -> int:
    rows = adapter_rows()
    if args.json:
        _print_json(rows)
        return 0
    header = {
        "type": "TYPE",
        "peft_type": "PEFT TYPE",
        "mergeable": "MERGEABLE",
        "origin": "ORIGIN",
        "description": "DESCRIPTION",
    }

    def cell(row: dict[str, Any], key: str) -> str:
        value = row[key]
        if key == "mergeable" and value is not None and row is not header:
            return "yes" if value else "no"
        return "-" if value is None else str(value)

    keys = list(header)
    widths = {k: max(len(cell(r, k)) for r in [header, *rows]) for k in keys[:-1]}
    for row in [header, *rows]:
        print("  ".join([*(cell(row, k).ljust(widths[k]) for k in keys[:-1]), cell(row, keys[-1])]).rstrip())
    return 0


def cmd_rewards(args: argparse.Namespace) -> int:
    from peft_framework.config.rewards_schema import reward_rows

    rows = reward_rows()
    if args.json:
        _print_json(rows)
        return 0
    width = max(len(row["name"]) for row in rows)
    origin_width = max(len(row["origin"]) for row in rows)
    print(f"{'NAME'.ljust(width)}  {'ORIGIN'.ljust(origin_width)}  OPTIONS (defaults) / TARGET")
    for row in rows:
        if row["options"] is None:
            detail = row["target"]
        else:
            given = [f"{k} (required)" for k in row["required"]]
            detail = ", ".join(given + [f"{k}={v}" for k, v in row["options"].items()])
        print(f"{row['name'].ljust(width)}  {row['origin'].ljust(origin_width)}  {detail}")
    return 0


def _stage(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        from peft_framework.models.optional_imports import bitsandbytes_gate

        config = _load(args)
        with bitsandbytes_gate(config.model.quantization.bits is not None):  # imported only when quantized
            stage = getattr(importlib.import_module(module), function)
            summary = stage(config, root=args.root)
        # under torchrun every process runs the stage; only the main one reports
        if os.environ.get("RANK", "0") == "0":
            _print_json(summary)
        return 0

    return run


def cmd_inspect_data(args: argparse.Namespace) -> int:
    from peft_framework.inspect_data import inspect_data

    inspect_data(_load(args), root=args.root, rows=args.rows, split=args.split)
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from peft_framework.data.samples import write_samples

    _print_json(write_samples(args.out, overwrite=False))  # never over a user's own file
    return 0


def _named_dir(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise UserError(f"--adapter {text!r}: expected NAME=DIR, e.g. --adapter support=models/adapter")
    return name, path


def cmd_generate(args: argparse.Namespace) -> int:
    adapters: dict[str, str] = {}
    for text in args.adapter:
        name, path = _named_dir(text)
        if name in adapters:
            raise UserError(
                f"--adapter {text!r}: the name {name!r} is given twice; allowed: one directory per name"
            )
        adapters[name] = path
    # generate_cli validates --use (adapter names, or 'base' for the plain base model)
    from peft_framework.inference import generate_cli

    images = {"images": list(args.image)} if args.image else {}  # --image PATH: vision-language bases
    outputs = generate_cli(args.base, adapters, args.use, list(args.prompt), args.max_new_tokens, **images)
    if args.json:
        _print_json(outputs)
    else:
        for i, text in enumerate(outputs):
            if len(outputs) > 1:
                print(f"--- {i + 1}/{len(outputs)}")
            print(text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peft_framework import predict

    if (args.input is None) != (args.output is None):
        raise UserError("--input and --output go together: predict FILE.jsonl into another FILE.jsonl")
    target = Path(args.target)
    if target.is_file() and target.suffix.lower() in (".yaml", ".yml", ".json"):
        args.config, args.overrides = args.target, []
        plan = predict.plan_for_config(_load(args), args.adapter)
    else:
        plan = predict.plan_for_model(args.target, args.adapter, args.task)
    options = dict(
        use=args.use, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device
    )
    if args.input is not None:
        _print_json(predict.predict_file(plan, Path(args.input), Path(args.output), **options))
        return 0
    for row in predict.predict(plan, [{"text": t} for t in args.text], **options):
        print(json.dumps(row, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; allowed: an integer >= 1")
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML or JSON config file, e.g. params.yaml")
    p.add_argument(
        "overrides",
        metavar="KEY=VALUE",
        nargs="*",
        default=[],
        help="dotted overrides, values parsed as YAML: adapter.r=32 'adapter.target_modules=[q_proj,v_proj]'",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peft-framework",
        description="Configuration-driven parameter-efficient fine-tuning (LoRA, AdaLoRA, IA3, bottleneck).",
    )
    parser.add_argument("--version", action="version", version=f"peft-framework {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", help="check a config; prints 'OK <config hash>'")
    _add_config_args(p)
    p.add_argument("--hashes", action="store_true", help="also print each section's content hash")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the fully resolved config (defaults filled in) as YAML")
    _add_config_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("schema", help="print the JSON Schema of config files (for editors)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("adapters", help="list installed adapter types and where they come from")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser(
        "rewards", help="list the reward functions train.rewards may name (built-ins, plug-ins)"
    )
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=cmd_rewards)

    for command, (module, function, help_text) in STAGES.items():
        p = sub.add_parser(command, help=f"{help_text}; prints a JSON summary")
        _add_config_args(p)
        p.add_argument(
            "--root",
            default=".",
            help="project root: relative paths in the config are resolved "
            "against it (default: the current directory)",
        )
        p.set_defaults(func=_stage(module, function))

    p = sub.add_parser(
        "inspect-data", help="show prepared rows with the trained tokens marked, and rejected rows with why"
    )
    _add_config_args(p)
    p.add_argument("--rows", type=_positive_int, default=5, metavar="N", help="rows to show (default: 5)")
    p.add_argument("--split", default="train", metavar="S", help="train | validation | test (default: train)")
    p.add_argument("--root", default=".", help="project root (default: the current directory)")
    p.set_defaults(func=cmd_inspect_data)

    p = sub.add_parser("sample-data", help="write the built-in sample datasets (JSONL)")
    p.add_argument("--out", default="data/raw", help="output directory (default: data/raw)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("generate", help="generate text with a base model and optional adapters")
    p.add_argument(
        "--base",
        required=True,
        metavar="MODEL_OR_CONFIG",
        help="hub id, local model dir, builtin:tiny-llama, or a config file (its model section)",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="load an adapter directory under NAME (repeatable)",
    )
    p.add_argument("--use", metavar="NAME", help="the adapter (NAME) to generate with")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="prompt (repeatable)")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="vision-language bases: the image each prompt asks about (one for all prompts, or one per prompt)",
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="N")
    p.add_argument("--json", action="store_true", help="print the outputs as a JSON list")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "predict", help="classify or complete new inputs with the trained adapter / merged model"
    )
    p.add_argument(
        "target", metavar="CONFIG_OR_MODEL", help="params.yaml, a model dir / hub id, or an export"
    )
    p.add_argument(
        "--adapter", metavar="DIR", help="adapter directory (default with a config: train.output_dir)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", metavar="TEXT", help="an input text (repeatable)")
    source.add_argument(
        "--input", metavar="FILE.jsonl", help="JSON Lines with a 'text' (or 'prompt') per row"
    )
    p.add_argument(
        "--output", metavar="FILE.jsonl", help="where --input's predictions go (written atomically)"
    )
    p.add_argument(
        "--use", choices=("adapter", "merged", "both"), help="base + adapter, merged model, or both"
    )
    p.add_argument(
        "--task", choices=("causal_lm", "sequence_classification"), help="default: the model's own"
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32, metavar="N")
    p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_predict)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but KEY=VALUE overrides may also follow options (`train CONFIG --root R a.b=1`): argparse
    stops filling a `*` positional once an option intervenes, so such leftovers are added here."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `peft-framework schema | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # the one boundary: I/O, corrupt files, disk full -> `error:`; bugs re-raise
        from peft_framework.failures import describe_failure

        message = describe_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
