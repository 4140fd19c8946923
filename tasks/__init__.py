"""Prefect tasks for the pipeline stages (the pipeline layer: imports the library, never the reverse).

Importing this package
  - applies the project's Prefect settings (prefect.toml) as environment defaults, so it must happen
    before Prefect itself is imported (`flows` imports it first);
  - puts this checkout's `src/` first on sys.path, so the library that runs is the code DVC tracks as
    the stages' deps, also in `dvc exp run --temp/--queue` copies of the project (where an editable
    install would still point at the main workspace).
"""

import sys

from tasks import settings as _settings

_settings.apply()

_SRC = _settings.ROOT / "src"
if (_SRC / "peft_framework").is_dir() and "peft_framework" not in sys.modules and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
