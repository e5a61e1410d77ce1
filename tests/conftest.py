"""Fixtures shared across packages: a headless Debian chromium, and one run of the end-to-end demo (and of its
interleaving variant).

Chromium: `make test` installs Debian's `chromium` and `chromium-driver` (and selenium) where they are missing.
Outside CI the browser tests skip, saying so, where either is missing; in CI (CI=true) that is a failure.
selenium-manager is never allowed to download a browser or driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1440,1400",
)


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A selenium WebDriver on the system chromium with the browser console log enabled."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        missing = "Debian chromium not found: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def _run_demo(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> dict[str, Any]:
    from deploy.demo.cli import build_parser, run

    workdir = tmp_path_factory.mktemp("demo") / "demo"
    args = build_parser().parse_args(
        [
            "--workdir", str(workdir),
            "--users", "300",
            "--requests-per-user", "2",
            "--impressions", "6000",
            "--ranking-epochs", "2",
            "--retrieval-steps", "20",
            "--concurrency", "4",
            *extra,
        ]
    )  # fmt: skip
    summary = run(args)
    return {**summary, "workdir": workdir, "metrics": args.metrics}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The README's main command, shrunk (300 users): real training, servers, Kafka and analytics; run once.

    It checks the plumbing, not the effect: with this small a training budget the lift can go either way.
    """
    return _run_demo(tmp_path_factory)


@pytest.fixture(scope="session")
def interleaving_demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``make demo DEMO_ARGS="--interleaving"``, shrunk like ``demo_run``: an interleaving experiment through real
    gRPC and Kafka next to the A/B test of the same two rankers; run once."""
    return _run_demo(tmp_path_factory, "--interleaving")


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (cert.pem, key.pem) for localhost and 127.0.0.1, made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
