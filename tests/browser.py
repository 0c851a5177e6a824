"""A real headless Chromium for the dashboard's tests (Debian's chromium and
chromium-driver, installed by ./dev test): the ``browser`` fixture (conftest.py serves
it), a free port, a patient wait, and `sisas up` serving the dashboard (:class:`Up`)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from tests.cli_process import SISAS, base_env
from tests.runs import ROOT, TEST_PIPES

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


SCREENSHOTS = ROOT / "build" / "screenshots"


class Up:
    """`sisas up` in a child process, serving the dashboard on a fixed port."""

    def __init__(self, home: Path, port: int, *options: str) -> None:
        self.home, self.port, self.options = home, port, options
        self.env = base_env(SISAS_HOME=str(home))
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*SISAS, "up", "--pipelines", TEST_PIPES, "--dashboard-port", str(self.port),
             *self.options],
            env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "the dashboard did not come up in 60 s"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
