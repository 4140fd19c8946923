"""Every command in README.md, params/README.md and docs/*.md works as written (issue 28 item 6).

Shell commands are taken from the fenced ```bash blocks and from `$ ` lines of the other blocks. Cheap
ones run (`peft-framework validate|render|schema|adapters`, whose documented output is compared); the
others are parsed by the real command-line parsers without running: `peft-framework` (and under
torchrun/accelerate), `dvc`, `prefect`; `python -m tasks.X|flows.X` and `python bench/X.py` must exist and
know the flags given. `prefect deploy` needs the work pools of the deployments it deploys (prefect.yaml)
created before it in the same block. Any other program must be in ALLOWED, with the reason it is
neither run nor parsed here. Presets: params/README.md names every params/*.yaml.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from peft_framework import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "params" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"bash", "sh", "shell", "console"}
RUN = {"validate", "render", "schema", "adapters"}
"""peft-framework subcommands cheap enough to run here (config work only, no model)."""
ALLOWED = {
    "python3": "`python3 -m venv`: creates an environment (the README's install line; .ci/run runs it)",
    ".": "`. .venv/bin/activate`: a shell builtin of the install line",
    "pip": "installs packages: .ci/run runs the install line in a fresh environment",
    "git": "git's own commands on the user's repository (commit, clone, push)",
    "cd": "a shell builtin",
    "cp": "copies a preset over params.yaml; the preset files are checked to exist",
    "export": "sets environment variables for the commands that follow",
    "gto": "GTO's registry listing; `python -m tasks.promote` (tested in test_promote.py) writes what it shows",
}


@dataclass(frozen=True)
class Command:
    doc: str
    block: int
    argv: list[str]
    output: tuple[str, ...] = ()
    placeholders: bool = False
    """written with <placeholders> (replaced by 'x'): parsed, never run"""

    def __str__(self) -> str:
        return f"{self.doc} block {self.block}: {shlex.join(self.argv)}"


def _split(line: str) -> list[list[str]]:
    """A shell line as its simple commands (split on && || ; |), comments and redirections dropped."""
    line = re.sub(r"<[\w-]+>", "x", line)  # placeholders: <name>, <repo>, <config>
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    redirect = False
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append([])
        elif token in {">", ">>", "<", "2>"}:
            redirect = True
        elif redirect:
            redirect = False
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


INLINE = re.compile(
    r"`((?:dvc|prefect|peft-framework|python -m|python bench/\S+|torchrun|accelerate) [^`]+)`"
)
"""A command in running text; synopses (`...`, `[OPTIONAL]`) and `show/diff` shorthands are prose, not commands."""


INLINE_BLOCK = -1
"""`Command.block` of a command in running text."""


def _commands(doc: str, block: int, line: str, output: tuple[str, ...] = ()) -> list[Command]:
    return [Command(doc, block, argv, output, bool(re.search(r"<[\w-]+>", line))) for argv in _split(line)]


def commands() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        for block, match in enumerate(FENCE.finditer(text)):
            lang, body = match.group(1), match.group(2).replace("\\\n", " ")
            lines = body.splitlines()
            if lang in SHELL:
                for line in lines:
                    found += _commands(doc, block, line)
                continue
            for i, line in enumerate(lines):
                if line.startswith("$ "):
                    rest = lines[i + 1 :]
                    end = next((j for j, x in enumerate(rest) if x.startswith("$ ")), len(rest))
                    found += _commands(doc, block, line[2:], tuple(rest[:end]))
        for span in INLINE.findall(FENCE.sub("", text)):
            if not (re.search(r"\.\.\.|\[", span) or re.match(r"dvc \w+ \w+/\w", span)):
                found += _commands(doc, INLINE_BLOCK, span.replace("\n", " "))
    return found


COMMANDS = commands()


def _env_stripped(argv: list[str]) -> list[str]:
    i = 0
    while i < len(argv) and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[i]):
        i += 1
    return argv[i:]


def _parse_cli(args: list[str]) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            cli.build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"peft-framework {shlex.join(args)}: {stderr.getvalue().strip()}") from exc


def _run_cli(command: Command, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    printed = (out.getvalue() + err.getvalue()).splitlines()
    if command.output:  # the documented output, in order (extra lines such as warnings allowed)
        lines = iter(printed)
        for expected in command.output:
            assert any(line.rstrip() == expected.rstrip() for line in lines), (
                f"{command}: documented line {expected!r} not printed; got:\n" + "\n".join(printed)
            )
    else:
        assert code == 0, f"{command}: exit {code}\n" + "\n".join(printed)


def _module_flags(module: str, flags: list[str], where: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{where}: no module {module}"
    _file_flags(Path(spec.origin), flags, where)


def _file_flags(path: Path, flags: list[str], where: str) -> None:
    assert path.is_file(), f"{where}: no file {path}"
    source = path.read_text(encoding="utf-8")
    for flag in flags:
        assert f'"{flag.split("=")[0]}"' in source, f"{where}: {path.name} has no option {flag}"


def _check_python(command: Command, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module == "peft_framework":
            _check_cli(command, rest, monkeypatch)
        elif module == "pytest":
            assert (ROOT / "tests").is_dir()
        else:
            assert module.split(".")[0] in {"tasks", "flows"}, f"{command}: unexpected module {module}"
            _module_flags(module, [a for a in rest if a.startswith("--")], str(command))
    else:
        _file_flags(ROOT / args[0], [a for a in args[1:] if a.startswith("--")], str(command))


def _check_cli(command: Command, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _parse_cli(args)
    if args and args[0] in RUN and not command.placeholders:
        _run_cli(command, args, monkeypatch)


def _check_launcher(command: Command, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun / accelerate launch ... -m peft_framework ARGS: the launched command is ours."""
    assert "-m" in argv and argv[argv.index("-m") + 1] == "peft_framework", f"{command}: launches what?"
    _parse_cli(argv[argv.index("-m") + 2 :])


def _check_dvc(command: Command, args: list[str]) -> None:
    from dvc.cli import DvcParserError, parse_args

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parse_args(args)
    except (DvcParserError, SystemExit) as exc:
        raise AssertionError(f"{command}: {stderr.getvalue().strip()[-400:]}") from exc


_PREFECT_SESSION = {"--no-prompt": 0, "--prompt": 0, "--profile": 1}
"""Prefect's root options (prefect.cli._app._root_callback) and how many values each takes."""


def _prefect_tokens(args: list[str]) -> list[str]:
    while args and args[0] in _PREFECT_SESSION:
        args = args[1 + _PREFECT_SESSION[args[0]] :]
    return args


def _check_prefect(command: Command, args: list[str]) -> None:
    from prefect.cli._app import _app

    try:
        _app.parse_args(_prefect_tokens(args), exit_on_error=False, print_error=False)
    except Exception as exc:  # cyclopts' CycloptsError subclasses: unknown command/option, missing value
        raise AssertionError(f"{command}: {exc}") from exc


def _deployment_pools() -> dict[str, str]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d["work_pool"]["name"] for d in spec["deployments"]}


def _deployed(args: list[str]) -> list[str]:
    """The deployments `prefect deploy ARGS` deploys (--all, or -n/--name)."""
    pools = _deployment_pools()
    if "--all" in args:
        return list(pools)
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in {"-n", "--name"}]


def check(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _env_stripped(command.argv)
    program, args = argv[0], argv[1:]
    if program == "peft-framework":
        _check_cli(command, args, monkeypatch)
    elif program == "python":
        _check_python(command, args, monkeypatch)
    elif program in {"torchrun", "accelerate"}:
        _check_launcher(command, argv, monkeypatch)
    elif program == "dvc":
        _check_dvc(command, args)
    elif program == "prefect":
        _check_prefect(command, args)
    elif program == "cp":
        assert (ROOT / args[0]).is_file(), f"{command}: no file {args[0]}"
    else:
        assert program in ALLOWED, f"{command}: {program!r} is neither checked here nor in ALLOWED (with why)"


def test_the_docs_have_commands_of_every_kind():
    programs = {_env_stripped(c.argv)[0] for c in COMMANDS}
    assert {"peft-framework", "python", "dvc", "prefect", "torchrun", "accelerate"} <= programs
    assert any(c.output for c in COMMANDS)  # a `$ ` command with its documented output


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    check(command, monkeypatch)


def test_prefect_deploy_follows_the_pools_it_needs():
    """`prefect deploy` fails when a deployment's work pool does not exist: each documented block that
    deploys creates those pools before it (in that block)."""
    pools = _deployment_pools()
    blocks: dict[tuple[str, int], list[list[str]]] = {}
    for c in COMMANDS:
        if c.block != INLINE_BLOCK:  # running text may name `prefect deploy --all` to explain it
            blocks.setdefault((c.doc, c.block), []).append(_env_stripped(c.argv))
    deploys = 0
    for (doc, block), argvs in blocks.items():
        created: set[str] = set()
        for argv in argvs:
            args = _prefect_tokens(argv[1:]) if argv[0] == "prefect" else []
            if args[:2] == ["work-pool", "create"]:
                created.add(args[2])
            elif args[:1] == ["deploy"]:
                deploys += 1
                for name in _deployed(args):
                    assert name in pools, f"{doc} block {block}: no deployment {name!r} in prefect.yaml"
                    assert pools[name] in created, (
                        f"{doc} block {block}: `prefect {shlex.join(args)}` deploys {name!r} on work pool "
                        f"{pools[name]!r}, not created before it (prefect work-pool create {pools[name]} ...)"
                    )
    assert deploys >= 2


def test_command_synopsis_names_real_subcommands():
    """The README's usage block (`peft-framework SUB|SUB ...`) names subcommands the parser has."""
    parser = cli.build_parser()
    [choices] = [a.choices for a in parser._actions if getattr(a, "choices", None)]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = [
        name
        for lang, body in FENCE.findall(text)
        if lang == "text"
        for line in body.splitlines()
        if line.startswith("peft-framework ")
        for name in line.split()[1].split("|")
    ]
    assert len(named) >= 8
    assert not [n for n in named if n not in choices], f"not subcommands: {choices.keys()}"
    documented = set(named)
    assert not [n for n in choices if n not in documented], "subcommands missing from the README usage block"


def test_params_readme_lists_every_preset():
    table = (ROOT / "params" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([\w.-]+\.yaml)` \|", table, re.MULTILINE))
    presets = {p.name for p in (ROOT / "params").glob("*.yaml")}
    assert listed == presets


def test_readme_names_the_default_model():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Using a real model") :]
    claim = re.search(r"The defaults \(`params.yaml`\) use `([^`]+)`", section)
    assert claim, "README 'Using a real model' no longer says what the defaults use"
    assert claim.group(1) == params["model"]["name_or_path"]
