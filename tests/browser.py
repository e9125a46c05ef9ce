"""What every browser test shares (registered as fixtures in conftest.py): `studio`, the README's
`bpnet-studio up` on a temporary data dir and a free port; `browser_page`, pages of Debian's
headless Chromium with the timeouts this loaded machine needs; and waits on what the page shows
(never a sleep): the app's script finished, a canvas table's cell drawn. Screenshots and the
server log go to test-artifacts/browser/."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-artifacts" / "browser"
START_TIMEOUT_S = 60
RUN_TIMEOUT_S = 600   # a tiny run takes 3-8 min on this shared, loaded machine
# At a load average of 25 a Streamlit page takes a minute to draw on this shared machine.
UI_TIMEOUT_MS = 120_000
VIEWPORT_WIDTH = 1400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studio_command(port):
    """`bpnet-studio up` from the venv when installed as a script, else the same module."""
    script = Path(sys.executable).parent / "bpnet-studio"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "worker.cli"]
    return base + ["up", "--port", str(port)]


def wait_for_http(url, process, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`bpnet-studio up` exited with code {process.returncode} before the dashboard answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dashboard did not answer at {url} within {timeout_s} s")


def skip_without_chromium():
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture
def studio(tmp_path):
    """Base URL of a running `bpnet-studio up` on a fresh data dir (tmp_path/studio); stopped
    afterwards."""
    skip_without_chromium()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BPNET_STUDIO_ARTIFACTS")}
    env["BPNET_STUDIO_HOME"] = str(tmp_path / "studio")
    log = (tmp_path / "studio.log").open("w")
    process = subprocess.Popen(studio_command(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_stcore/health", process, START_TIMEOUT_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "studio.log", SHOTS / "studio.log")


def stop(process):
    """SIGTERM to `up` (it stops its worker and dashboard), then to its whole process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)   # the group this test started, nothing else
    except ProcessLookupError:
        pass


def launch_chromium(pw):
    """Debian's Chromium, headless; the flags keep it off this machine's closed network."""
    return pw.chromium.launch(executable_path=str(CHROMIUM),
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@pytest.fixture
def browser_page():
    """`open_page(height=2400)`: a new page of one headless Chromium (closed after the test),
    1400 px wide, with Playwright's waits and `expect` set to UI_TIMEOUT_MS."""
    skip_without_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)

        def open_page(height=2400):
            page = browser.new_page(viewport={"width": VIEWPORT_WIDTH, "height": height})
            page.set_default_timeout(UI_TIMEOUT_MS)
            return page

        try:
            yield open_page
        finally:
            browser.close()


def shot(page, name):
    """A full-page screenshot (a long page on a loaded machine takes a while to capture)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, timeout=UI_TIMEOUT_MS)


def wait_for_app_run(page):
    """Until the page's script run that the last action asked for has finished: the frontend
    marks the app `rerunRequested` as soon as a widget changes, `running` while the script runs,
    `notRunning` when the page is complete (no sleep that a loaded machine outlasts)."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')).to_be_attached()
    expect(page.locator('[data-testid="stApp"][data-test-connection-state="CONNECTED"]')).to_be_attached()


def set_number(page, label, value):
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    wait_for_app_run(page)
