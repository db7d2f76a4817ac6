"""Headless Chromium for tests, through Selenium and Debian's ``chromium`` and ``chromedriver``
(``.ci/run`` installs both with apt-get).

:func:`chromium_driver` starts one browser with a fresh profile; the :func:`browser` fixture
(module-scoped: one browser per test module) wraps it. Where the browser, the driver or Selenium is
missing, a test skips with a message — but under ``CI=true`` it fails, so CI never passes by
skipping the browser tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run")
WINDOW = (1280, 900)


def missing_browser(reason: str) -> None:
    """Fail under ``CI=true``, skip elsewhere, saying what is missing."""
    message = f"{reason}; install Debian's chromium and chromium-driver (as .ci/run does) to run the browser tests"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def chromium_driver(profile: Path):
    """A headless Chromium WebDriver using ``profile`` as its (fresh) user-data directory."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_browser("selenium is not installed")
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.is_file():
            missing_browser(f"{program} does not exist")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """One headless Chromium for the whole test module, closed (and its profile removed) after it."""
    profile = Path(tempfile.mkdtemp(prefix="lmlab-chromium-"))
    driver = chromium_driver(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
