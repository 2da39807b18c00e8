"""Headless Chromium for the dashboard tests, driven over the W3C WebDriver protocol with plain `requests`.

Debian's `chromium` and `chromium-driver` (tests/run-all.sh installs them as root); no Selenium: the few calls the
tests need (open a URL, run a script, take a screenshot) are five HTTP requests to chromedriver.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from grace_hpc.serve.supervisor import free_port

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def browser_paths() -> tuple[str, str] | None:
    """(chromedriver, chromium) when both are installed."""
    driver = shutil.which("chromedriver")
    binary = next((p for p in map(shutil.which, CHROMIUM_CANDIDATES) if p), None)
    return (driver, binary) if driver and binary else None


@dataclass
class Browser:
    session: str  # the WebDriver session's URL

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        r = requests.request(method, f"{self.session}{path}", json=payload, timeout=60)
        body = r.json()
        if r.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: HTTP {r.status_code}: {body['value']}")
        return body["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body; `arguments` holds `args`) in the page and return its value."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_for(self, script: str, *args: Any, until: Callable[[Any], object] = bool, timeout_s: float = 20.0) -> Any:
        """Until what `script` returns passes `until` (by default: is truthy); returns it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.run(script, *args)
            if until(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"not true after {timeout_s}s: {script}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path


@contextmanager
def headless_chromium(profile: Path, width: int = 1500, height: int = 1000) -> Iterator[Browser]:
    found = browser_paths()
    if found is None:
        raise RuntimeError("chromedriver and chromium are not installed (apt-get install chromium chromium-driver)")
    driver, binary = found
    port = free_port("127.0.0.1")
    with open(profile.with_suffix(".chromedriver.log"), "wb") as log:
        proc = subprocess.Popen([driver, f"--port={port}"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: requests.get(f"{base}/status", timeout=2).json()["value"]["ready"])
        options = {"binary": binary, "args": [
            "--headless=new", "--no-sandbox",  # no sandbox: tests run as root in a container
            "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
        ]}
        r = requests.post(f"{base}/session", timeout=60, json={
            "capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}})
        r.raise_for_status()
        session = f"{base}/session/{r.json()['value']['sessionId']}"
        try:
            yield Browser(session)
        finally:
            requests.delete(session, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for pid in _pids_using(profile):  # a browser its driver did not take down (a failed session)
            os.kill(pid, signal.SIGKILL)


def _pids_using(profile: Path) -> list[int]:
    marker = f"--user-data-dir={profile}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _wait(ready: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"chromedriver not ready after {timeout_s}s")
        time.sleep(0.1)
