"""A real headless Chromium for tests: ``browser`` (session fixture), a Selenium driver of Debian's chromium.

The fixture installs ``chromium`` and ``chromium-driver`` with apt when they are missing (skips, saying
why, only without apt-get or root) and drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver``.
Import ``browser_fixture`` to use it. Screenshots go to ``$DSQ_ARTIFACTS/screenshots`` (default
``.artifacts/screenshots`` in the checkout).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apt import AptUnavailable, ensure_packages

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parent.parent


def screenshot_dir() -> Path:
    d = Path(os.environ.get("DSQ_ARTIFACTS", ROOT / ".artifacts")) / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(name="browser", scope="session")
def browser_fixture() -> Iterator[Any]:
    try:
        ensure_packages(["chromium", "chromium-driver"], lambda: CHROMIUM.exists() and CHROMEDRIVER.exists())
    except AptUnavailable as e:
        pytest.skip(str(e))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
