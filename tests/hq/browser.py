"""A real browser for the console's tests: Debian's headless Chromium driven through
Debian's chromedriver by Selenium, both named by path, with every download disabled.

- Selenium Manager (which would look for, and download, a driver or a browser) is never
  run: the driver's path is given, and ``SE_MANAGER_PATH`` names a file that does not
  exist, so that any call to it fails the test instead of reaching the network.
- Chromium runs as root here, so without its sandbox; with background networking,
  component updates and sync off (this machine's closed network refuses those
  connections) and a new profile in the test's own folder.
- Every request the page makes is read back from Chrome's own network log (the
  performance log): ``Browser.requested_hosts``.
- Every page the test visits is kept as a screenshot; ``Browser.save_screenshots``
  writes them to the test's output folder when the test failed.
"""

import json
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NO_MANAGER = "/nonexistent/selenium-manager"
LAPTOP = (1280, 800)
TABLET = (768, 1024)


def available() -> str | None:
    """Why the browser cannot run here, or None ('make test' installs both)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: run scripts/install-test-deps"
    return None


class Browser:
    def __init__(self, base_url: str, profile: Path) -> None:
        os.environ["SE_MANAGER_PATH"] = NO_MANAGER  # any call to Selenium Manager fails
        os.environ["SE_OFFLINE"] = "true"
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.base_url = base_url
        self.screenshots: list[tuple[str, bytes]] = []
        self._events: list[dict[str, Any]] = []
        self._console: list[dict[str, Any]] = []

    # -- pages -----------------------------------------------------------------------
    def visit(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.shot()

    def shot(self, label: str | None = None) -> None:
        """Keep a screenshot of the page as it is now."""
        name = label or urllib.parse.urlsplit(self.driver.current_url).path.strip("/") or "root"
        self.screenshots.append((name, self.driver.get_screenshot_as_png()))

    @property
    def path(self) -> str:
        parts = urllib.parse.urlsplit(self.driver.current_url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def click(self, css: str) -> None:
        self.find(css).click()
        self.shot()

    def login(self, token: str) -> None:
        self.visit("/console/login")
        self.find("input[name=token]").send_keys(token)
        self.click("section.login button[type=submit]")

    def resize(self, size: tuple[int, int]) -> None:
        self.driver.set_window_size(*size)

    def overflows(self) -> bool:
        """Does the page scroll sideways (wider than the window)?"""
        return bool(
            self.driver.execute_script(
                "return document.documentElement.scrollWidth > window.innerWidth"
            )
        )

    # -- what the browser did ------------------------------------------------------------
    def _drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            self._events.append(json.loads(entry["message"])["message"])
        self._console.extend(self.driver.get_log("browser"))

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for so far, from Chrome's own network log."""
        self._drain()
        return [
            e["params"]["request"]["url"]
            for e in self._events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def console_messages(self) -> list[str]:
        self._drain()
        return [str(m.get("message", "")) for m in self._console]

    def save_screenshots(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, (name, png) in enumerate(self.screenshots):
            path = folder / f"{i:02d}-{name.replace('/', '_')[:60] or 'page'}.png"
            path.write_bytes(png)
            written.append(path)
        return written

    def quit(self) -> None:
        self.driver.quit()


def clean_profile(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
