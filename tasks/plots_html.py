"""`dvc plots show` offline: the HTML template DVC fills (`plots.html_template` in .dvc/config), with the
vega bundle inline instead of DVC's default `<script src="https://cdn.jsdelivr.net/...">` tags, which
leave a blank page without network.

The bundle (vega, vega-lite and vega-embed in one file) is vendored from the PyPI package
django-js-lib-vega-embed (MIT; the JS is vega's own BSD-3 build) and committed as `.dvc/plots/offline.html`,
so a fresh clone renders its plots with nothing installed or fetched. The template has no `{scripts}`
placeholder: DVC puts its CDN tags there, so they are left out. A test checks the committed file against
the installed package; after bumping the package:

    python -m tasks.plots_html          # rewrite .dvc/plots/offline.html from the installed package
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / ".dvc" / "plots" / "offline.html"
DISTRIBUTION = "django-js-lib-vega-embed"
PACKAGE = "js_lib_vega_embed"
BUNDLE = "static/js_lib_vega_embed/vega-embed-full.js"

_PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega, vega-lite, vega-embed: {source}, written by `python -m tasks.plots_html` -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def installed_bundle() -> tuple[str, str]:
    """(the bundle's JS, where it came from) from the installed package."""
    version = importlib.metadata.version(DISTRIBUTION)
    js = (importlib.resources.files(PACKAGE) / BUNDLE).read_text(encoding="utf-8")
    if "</script" in js.lower():
        raise ValueError(f"{DISTRIBUTION} {version}: {BUNDLE} contains '</script', cannot be inlined")
    return js, f"{BUNDLE} of {DISTRIBUTION} {version}"


def render(js: str, source: str) -> str:
    return _PAGE.format(bundle=js.rstrip("\n"), source=source)


def main() -> int:
    try:
        page = render(*installed_bundle())
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
        print(
            f"error: {DISTRIBUTION} is not installed; install it with `pip install {DISTRIBUTION}`",
            file=sys.stderr,
        )
        return 2
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = TEMPLATE.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, TEMPLATE)
    print(f"wrote {TEMPLATE.relative_to(ROOT)} ({len(page) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
