"""A real headless Chromium for the dashboard's tests (Debian's chromium and
chromium-driver, installed by ./dev test): the ``browser`` fixture (conftest.py serves
it), a free port, and a patient wait."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    assert not missing, (
        f"{', '.join(missing)} missing: `./dev test` installs Debian's chromium and "
        "chromium-driver (apt-get install chromium chromium-driver)"
    )
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1100")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def page_wait(driver: webdriver.Chrome, what: str, timeout: float = 30) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(Exception,))
