"""A real headless browser for the report tests: Debian's chromium + chromium-driver via selenium.

Tests using it skip, with the reason, where chromium or its driver is not installed
(``apt-get install chromium chromium-driver``; ``.ci/run`` installs them when root).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,2000",
)


@dataclass
class Page:
    """What the browser saw: the title, console errors, whether images decoded, a screenshot."""

    title: str
    errors: list[str]
    images_ok: bool
    screenshot: np.ndarray


def _binaries() -> tuple[str, str]:
    browser = next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    return shutil.which(browser), driver


@contextmanager
def open_page(html: Path, profile: Path) -> Iterator[Page]:
    """Open a local HTML file in headless chromium and report what it shows.

    Args:
        html: the page.
        profile: an empty folder for the browser profile.

    Yields:
        The :class:`Page`.
    """
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(html.resolve().as_uri())
        images_ok = driver.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        yield Page(driver.title, errors, bool(images_ok), shot)
    finally:
        driver.quit()
