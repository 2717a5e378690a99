"""The HTML performance report in a real headless browser: offline, no console errors, plots drawn."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bmkt.report import performance_report
from bmkt.simulate import simulate_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="chromium not installed (apt-get install chromium); CI installs it",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    store = simulate_store(n_customers=1500, days=200, seed=3)
    return performance_report(store, "2024-06-30", out / "performance.html")


def chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "CI must have chromium: .ci/run installs it"
    profile = cwd / "profile"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_report_is_self_contained(report: tuple[Path, dict]) -> None:
    html = report[0].read_text()
    assert not re.search(r"<script[^>]+src=", html), "no external scripts"
    assert not re.search(r"<link[^>]+href=\"?https?:", html), "no external stylesheets"
    assert html.count("plotly.js v") <= 2  # the library is inlined once
    assert "@example.com" not in html  # customer ids only


def test_report_loads_offline_without_errors_and_draws_plots(report: tuple[Path, dict]) -> None:
    path = report[0]
    n_figures = path.read_text().count('class="plotly-graph-div"')
    assert n_figures >= 4
    res = chromium("--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri(), cwd=path.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    console_errors = [
        line
        for line in res.stderr.splitlines()
        if "CONSOLE" in line and re.search(r"error|uncaught", line, re.IGNORECASE)
    ]
    assert console_errors == []
    dom = res.stdout
    # plotly replaces each placeholder div with drawn SVG
    assert dom.count('class="main-svg"') >= n_figures
    shot = path.with_suffix(".png")
    res = chromium(
        "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri(), cwd=path.parent
    )
    assert res.returncode == 0 and shot.stat().st_size > 20_000
