"""Headless Chromium for the tests that look at a page as a person does: Debian's chromium driven by Playwright
(`playwright install` downloads are not used). Without either, the test skips and says why."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TIMETUNING_CHROMIUM", "/usr/bin/chromium")


def sync_playwright_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.skip(f"no browser test: Playwright is not installed ({err})")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        pytest.skip(f"no browser test: no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    return sync_playwright
