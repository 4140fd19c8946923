"""`dvc plots show` (issue 28 item 5): the plots a user looks at, and a page that renders offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tasks import plots_html

ROOT = Path(__file__).resolve().parents[2]
PLOTS = {"loss", "learning_rate", "eval_comparison"}


def _project(dest: Path) -> Path:
    """dvc.yaml, params.yaml, DVC's config and the committed reports (dvclive's series and the eval bars)."""
    files = subprocess.run(
        ["git", "ls-files", "dvc.yaml", "params.yaml", ".dvc", "reports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in {*files, ".dvc/plots/offline.html"}:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    (dest / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    return dest


def _dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_dvc_plots_show_renders_the_curves_a_user_looks_at_offline(tmp_path):
    project = _project(tmp_path / "project")
    assert (project / "reports/train/plots/metrics/total_flos.tsv").is_file()  # dvclive's noise is there
    shown = json.loads(_dvc(project, "plots", "show", "--json"))
    assert set(shown["data"]) == PLOTS, shown.get("errors")
    loss = shown["data"]["loss"][0]["content"]["data"]["values"]
    assert {row["filename"] for row in loss} == {"loss.tsv", "eval/loss.tsv"}  # train and validation

    _dvc(project, "plots", "show", "-o", "out")
    page = (project / "out" / "index.html").read_text()
    assert page.count("vegaEmbed(") == len(PLOTS)
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE), "remote script"
    assert "cdn.jsdelivr.net" not in page
    assert ".vegaEmbed=" in page and ".vegaLite=" in page  # the bundle itself, inline


def test_the_offline_template_is_the_installed_vega_bundle():
    pytest.importorskip(plots_html.PACKAGE, reason=f"{plots_html.DISTRIBUTION} (test extra) not installed")
    assert plots_html.TEMPLATE.read_text(encoding="utf-8") == plots_html.render(
        *plots_html.installed_bundle()
    ), "regenerate it: python -m tasks.plots_html"


CHROMIUM = Path("/usr/bin/chromium")


def test_the_plots_page_draws_every_plot_in_a_browser_without_network(tmp_path):
    """Headless Debian chromium with every host name unresolvable: vega draws one canvas per plot."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    project = _project(tmp_path / "project")
    _dvc(project, "plots", "show", "-o", "out")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ]
    dom = subprocess.run(
        [
            str(CHROMIUM),
            *flags,
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=20000",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--dump-dom",
            (project / "out" / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert len(re.findall(r'<canvas[^>]*class="marks"', dom)) == len(PLOTS), dom[-2000:]
