"""Loading a config imports neither torch nor transformers: every pipeline process loads the config, and
an all-cache-hit run (or a stage DVC runs only to find it unchanged) must not pay for them (issue 17)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peft_framework.adapters import registry

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "datasets")


def test_builtin_config_modules_name_the_methods_config_classes() -> None:
    for name in registry.BUILTIN_CONFIGS:
        assert registry.config_class(name) is registry.get(name).config_class


def test_loading_the_demo_config_imports_no_torch(tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from peft_framework.config import load_config_with_warnings\n"
        "from tasks.cache import key_material\n"
        "from tasks.stages import STAGES\n"
        "from pathlib import Path\n"
        f"config, _ = load_config_with_warnings({str(ROOT / 'params.yaml')!r}, ['adapter.type=ia3'])\n"
        "config, _ = load_config_with_warnings(sys.argv[1], [])\n"
        "for stage in STAGES.values():\n"
        f"    key_material(stage, config, Path({str(ROOT)!r}))\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "params.yaml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_warm_runner_client_imports_only_the_standard_library() -> None:
    """A pipeline command served by the warm runner (tasks/warm.py) is a thin client: it must reach the
    runner without importing Prefect, pydantic or the ML stack, or it would pay what the runner saves."""
    unwanted = ("prefect", "pydantic", "yaml", *HEAVY)
    script = (
        "import json, sys\n"
        "import flows\n"
        "from tasks import warm\n"
        "warm.runner_key()\n"
        f"print(json.dumps([m for m in {unwanted!r} if m in sys.modules]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _run_script(script: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stages_without_quantization_never_import_bitsandbytes() -> None:
    """transformers' Trainer imports peft, which imports bitsandbytes when installed; bitsandbytes' import
    logs a kernels-community trust warning. A run without model.quantization must not import it (issue 28)."""
    script = (
        "import json, sys\n"
        "from peft_framework.config import load_config\n"
        "from tasks.stages import STAGES\n"
        f"config = load_config({str(ROOT / 'params' / 'tiny-llama.yaml')!r})\n"
        "assert config.model.quantization.bits is None\n"
        "for stage in STAGES.values():\n"
        "    with stage.loaded(config):\n"
        "        import transformers.trainer, peft_framework.training.trainer\n"
        "loaded = [m for m in ('torch', 'transformers.trainer', 'bitsandbytes') if sys.modules.get(m)]\n"
        "import importlib.util\n"  # the block ends with the stage: a later quantized one in-process still works
        "print(json.dumps([*loaded, importlib.util.find_spec('bitsandbytes') is not None]))\n"
    )
    assert _run_script(script) == [
        "torch",
        "transformers.trainer",
        importlib.util.find_spec("bitsandbytes") is not None,
    ]


def test_a_quantized_stage_after_a_blocked_import_gets_bitsandbytes() -> None:
    """A warm runner's child inherits the block of its runner: a quantized config lifts it."""
    pytest.importorskip("bitsandbytes")
    script = (
        "import json, sys\n"
        "from peft_framework.config import load_config\n"
        "from peft_framework.models.optional_imports import gate_bitsandbytes\n"
        "from tasks.stages import STAGES\n"
        "gate_bitsandbytes(False)\n"
        "import transformers.trainer\n"
        "assert sys.modules['bitsandbytes'] is None\n"
        f"config = load_config({str(ROOT / 'params' / 'qlora.yaml')!r})\n"
        "with STAGES['train'].loaded(config):\n"
        "    import bitsandbytes\n"
        "from transformers.utils.import_utils import is_bitsandbytes_available\n"
        "print(json.dumps([str(is_bitsandbytes_available()), sys.modules['bitsandbytes'].__name__]))\n"
    )
    assert _run_script(script) == ["True", "bitsandbytes"]
