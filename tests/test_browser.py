"""The app's main job in a real browser: upload a zip, train, reload mid-run, evaluate, predict.

Starts ``streamlit run app.py`` on a free loopback port and drives Debian's chromium with
Playwright. Screenshots of each page go to ``$TLAPP_SCREENSHOTS`` (default ``screenshots/``).
A missing chromium fails the test: the browser check must not be skipped silently.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HARDCASES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
C01_ZIP = HARDCASES / "C01_control_3class" / "control_3class.zip"
WORKSPACE_ID = "browsertest"
SERVER_START_TIMEOUT = 60
STEP_TIMEOUT_MS = 60_000
TRAINING_TIMEOUT_MS = 240_000
MAX_SCREENSHOT_HEIGHT = 6000

# Returns the x values of every trace of every Plotly chart on the page, with the trace type.
PLOT_TRACES_JS = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(
    plot => (plot.data || []).map(trace => ({type: trace.type || 'scatter', x: Array.from(trace.x || [])})))
"""


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("TLAPP_SCREENSHOTS") or REPO / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(base_url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on {base_url} within {SERVER_START_TIMEOUT} s")


def start_server(workspace_root: Path, library: Path | None, log_path: Path) -> tuple[str, subprocess.Popen]:
    """Start the app on a free loopback port; return its base URL and the server process."""
    port = free_port()
    env = {**os.environ, "TLAPP_WORKSPACE": str(workspace_root)}
    if library is not None:
        env["TLAPP_DATASETS"] = str(library)
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.headless", "true", "--server.fileWatcherType", "none",
    ]
    log_file = open(log_path, "wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base_url, process)
    except Exception:
        stop_server(process)
        raise
    return base_url, process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def launch_browser(playwright):
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def wait_for_app(page) -> None:
    """Wait until the page is connected and Streamlit is not running a script."""
    page.wait_for_selector(
        '[data-testid="stApp"][data-test-script-state="notRunning"][data-test-connection-state="CONNECTED"]',
        timeout=STEP_TIMEOUT_MS,
    )


def plot_traces(page) -> list[dict]:
    return page.evaluate(PLOT_TRACES_JS)


def wait_for_curves(page, epochs: int, timeout_ms: int = TRAINING_TIMEOUT_MS) -> None:
    """Wait until a training-curve chart on the page shows ``epochs`` epochs."""
    expected = list(range(1, epochs + 1))
    page.wait_for_function(
        f"() => ({PLOT_TRACES_JS})().some(trace => trace.type === 'scatter' && trace.x.length === {epochs} && trace.x[{epochs - 1}] === {epochs})",
        timeout=timeout_ms,
    )
    assert any(trace["x"] == expected for trace in plot_traces(page))


def set_slider(page, label: str, value: int) -> None:
    """Move a Streamlit slider with the keyboard: Home goes to the minimum, then step right."""
    thumb = page.locator(f'input[type="range"][aria-label="{label}"]')
    thumb.focus()
    thumb.press("Home")
    for _ in range(value - int(thumb.get_attribute("min"))):
        thumb.press("ArrowRight")
    page.wait_for_function(
        f"() => document.querySelector('input[type=range][aria-label=\"{label}\"]').value === '{value}'"
    )
    page.wait_for_timeout(500)  # the slider sends its value once the keys are released
    wait_for_app(page)


def shot(page, name: str) -> Path:
    """Save a screenshot of the whole page, which scrolls inside Streamlit's main container."""
    path = screenshot_dir() / f"{name}.png"
    viewport = page.viewport_size
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": viewport["width"], "height": min(max(height, viewport["height"]), MAX_SCREENSHOT_HEIGHT)})
    page.wait_for_timeout(500)  # let Plotly redraw at the new size
    page.screenshot(path=str(path))
    page.set_viewport_size(viewport)
    return path


def open_page(page, base_url: str, url_path: str) -> None:
    page.goto(f"{base_url}/{url_path}?ws={WORKSPACE_ID}")
    wait_for_app(page)


def train_in_browser(page, base_url: str, epochs: int, reload_while_training: bool) -> None:
    """On the Train page: set the epochs, start, optionally reload mid-run, wait for the curves."""
    open_page(page, base_url, "train")
    page.get_by_text("Estimated training time").wait_for(timeout=STEP_TIMEOUT_MS)
    set_slider(page, "Epochs", epochs)
    page.get_by_role("button", name="Start training").click()
    # The progress bar shows while the job runs; a very fast machine may already be done.
    running = page.locator('[data-testid="stProgress"]').first
    running.or_(page.get_by_text(": finished")).first.wait_for(timeout=STEP_TIMEOUT_MS)
    if reload_while_training:
        shot(page, "train_running")
        page.reload()
        wait_for_app(page)
        page.get_by_text("Current run").wait_for(timeout=STEP_TIMEOUT_MS)
    wait_for_curves(page, epochs)
    page.get_by_text("Validation accuracy").first.wait_for(timeout=TRAINING_TIMEOUT_MS)
    wait_for_app(page)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    workspace_root = tmp_path / "workspaces"
    base_url, process = start_server(workspace_root, None, tmp_path / "streamlit.log")
    try:
        yield base_url, workspace_root / WORKSPACE_ID
    finally:
        stop_server(process)


def test_browser_upload_train_evaluate_predict(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base_url, workspace = server
    with zipfile.ZipFile(C01_ZIP) as archive:
        photo = tmp_path / "my_triangle.jpg"
        photo.write_bytes(archive.read("triangle/triangle_03.jpg"))

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        # A laptop without internet must get the whole app from the server: no request may leave it.
        elsewhere: list[str] = []
        page.on("request", lambda request: None if request.url.startswith((base_url, "data:", "blob:")) else elsewhere.append(request.url))
        try:
            # Data: upload the zip through the page's uploader.
            open_page(page, base_url, "data")
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(C01_ZIP))
            page.get_by_text("Unpacked control_3class.zip into the dataset 'control_3class'.").wait_for()
            page.get_by_text("Examples of each class").wait_for()
            wait_for_app(page)
            sidebar = page.locator('[data-testid="stSidebarNav"]').inner_text()
            assert "2. Train" in sidebar, "the sidebar must list app.py's pages"
            assert "common" not in sidebar
            shot(page, "data")

            # The sidebar links drop query parameters; the page puts the workspace id back.
            page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Home").click()
            page.get_by_text("Your progress").wait_for()
            page.wait_for_url(re.compile(f"ws={WORKSPACE_ID}"))
            # The progress columns render after the heading: wait for them, not for the heading.
            main = page.locator('[data-testid="stMain"]')
            main.get_by_text("control_3class").first.wait_for()
            wait_for_app(page)

            # Train 2 epochs, reloading the browser while the run is going.
            train_in_browser(page, base_url, epochs=2, reload_while_training=True)
            shot(page, "train")
            runs = list((workspace / "runs").iterdir())
            assert len(runs) == 1, "the reload must not start a second run"
            events = (runs[0] / "events.jsonl").read_text(encoding="utf-8")
            assert events.count('"kind": "done"') == 1

            # Evaluate: the confusion matrix is a heatmap over the three classes.
            page.get_by_role("link", name="Next: see what it gets right and wrong").click()
            page.get_by_text("Confusion matrix").first.wait_for()
            wait_for_app(page)
            heatmaps = [trace for trace in plot_traces(page) if trace["type"] == "heatmap"]
            assert len(heatmaps) == 1
            assert heatmaps[0]["x"] == ["circle", "square", "triangle"]

            # Clicking the bottom-right cell shows the triangles predicted as triangles.
            cells = page.locator(".js-plotly-plot .nsewdrag").first
            cells.scroll_into_view_if_needed()
            box = cells.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 5 / 6, box["y"] + box["height"] * 5 / 6)
            page.get_by_text(re.compile(r"\d+ photos? of triangle predicted as triangle")).wait_for()
            wait_for_app(page)
            shot(page, "evaluate")

            # Predict one photo.
            page.get_by_role("link", name="Next: classify new photos").click()
            page.get_by_text("Photos to classify").wait_for()
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
            page.get_by_text("probability").first.wait_for()
            wait_for_app(page)
            bars = [trace for trace in plot_traces(page) if trace["type"] == "bar"]
            assert len(bars) == 1
            assert page.get_by_text("my_triangle.jpg").count() >= 1
            shot(page, "predict")
            assert elsewhere == [], f"requests to other hosts: {elsewhere[:5]}"
        finally:
            browser.close()
