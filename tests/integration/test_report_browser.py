"""``fedpeft report`` on a real micro run, opened from file:// in Debian's headless Chromium.

The run is personalised (``trust``), so the page holds every kind of figure including the mixing matrix. The
browser must decode every embedded PNG (``complete`` and ``naturalWidth > 0``), log no console error and request
nothing but the page itself (Chromium's performance log). Set ``FEDPEFT_SCREENSHOT=PATH`` to keep a screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedpeft.cli.report  # noqa: F401  (registers the command)
from fedpeft.cli import app
from fedpeft.config import load_config
from fedpeft.experiment.run import run_experiment
from tests.integration.browser import headless_chromium
from tests.integration.conftest import MICRO
from tests.unit.test_report import RUN_SECTIONS


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    yield from headless_chromium(tmp_path_factory.mktemp("chromium-profile"), "1400,1000", ("performance", "browser"))


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for (Chromium's performance log), less its embedded data: URIs."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith("data:"):
                urls.append(url)
    return urls


@pytest.mark.slow
def test_report_of_a_real_run_renders_every_figure_in_chromium(tmp_path: Path, browser):
    overrides = ["fl.strategy=trust", "fl.strategy_args.weights=dynamic", f"output.dir={tmp_path / 'runs'}"]
    run_dir, _ = run_experiment(load_config("default", [*MICRO, *overrides]), quiet=True)
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = Path(result.output.strip())
    assert page == run_dir / "report.html"

    browser.get_log("browser")  # drop anything logged before the page
    browser.get_log("performance")
    browser.get(page.as_uri())
    state = browser.execute_script(
        "return {ready: document.readyState, sections: [...document.querySelectorAll('section')].map(s => s.id),"
        " images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,"
        " height: i.naturalHeight}))}"
    )
    assert state["ready"] == "complete"
    assert state["sections"] == RUN_SECTIONS
    alts = [image["alt"] for image in state["images"]]
    assert len(alts) == 8 and "mixing matrix, round 2" in alts, alts
    for image in state["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert set(requested_urls(browser)) == {page.as_uri()}
    text = browser.find_element("css selector", "#mixing").text
    assert "not recorded" not in text

    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    if target := os.environ.get("FEDPEFT_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
