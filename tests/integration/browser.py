"""Headless Debian Chromium through selenium, for the tests that check pages in a real browser (the chat UI,
the report). Skips, naming the packages, where chromium or chromedriver is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def headless_chromium(profile: Path, window: str, logs: tuple[str, ...] = ("performance",)) -> Iterator:
    """Yield a selenium driver of a fresh headless Chromium (its profile in ``profile``, ``window`` as
    ``W,H``, capturing the named log types), and quit it afterwards."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = "--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
    flags += f"--disable-background-networking --disable-component-update --disable-sync --window-size={window}"
    for flag in [*flags.split(), f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", dict.fromkeys(logs, "ALL"))
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
