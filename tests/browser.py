"""A headless Chromium for tests that check pages in a real browser (selenium + Debian's
``chromium`` and ``chromedriver``, which ``.ci/run`` installs).

:func:`headless_chromium` yields a selenium WebDriver. Without a browser (or selenium) the test
is skipped with the reason, except under ``CI=true``, where it fails: CI must run browser tests.
Use it as a context manager or through a fixture::

    @pytest.fixture(scope="module")
    def browser():
        with headless_chromium() as driver:
            yield driver
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from typing import Iterator

import pytest

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1280,900")
PAGE_LOAD_GUARD_S = 3600  # only catches a hung page; never a limit on how long it may take


def unavailable(reason: str) -> None:
    """Skip the test with ``reason``, or fail it under CI (``CI=true``), where the browser must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test cannot run under CI: {reason}")
    pytest.skip(reason)


def _first_found(names: tuple[str, ...]) -> str | None:
    return next((found for found in map(shutil.which, names) if found), None)


@contextmanager
def headless_chromium() -> Iterator["object"]:
    """A selenium Chrome WebDriver on headless Chromium, quit at the end."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install selenium)")
    chromium, driver_path = _first_found(CHROMIUM), _first_found(CHROMEDRIVER)
    if chromium is None or driver_path is None:
        unavailable("no chromium and chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:
        unavailable(f"chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(PAGE_LOAD_GUARD_S)
    try:
        yield driver
    finally:
        driver.quit()
