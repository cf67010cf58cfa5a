"""The Segmentation and Distillation pages in a real browser (chromium through Playwright).

Reuses the server and browser helpers of test_browser.py; screenshots go to the same folder
(``$TLAPP_SCREENSHOTS``, default ``screenshots/``). A missing chromium fails the test.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from conftest import HARDCASES
from PIL import Image
from test_browser import (
    STEP_TIMEOUT_MS,
    TRAINING_TIMEOUT_MS,
    launch_browser,
    open_page,
    plot_traces,
    server,  # noqa: F401  (a pytest fixture, used by name)
    set_slider,
    shot,
    wait_for_app,
    wait_for_curves,
)

from tlapp.training import TrainConfig, train

C01_ZIP = HARDCASES / "C01_control_3class" / "control_3class.zip"
C02_ZIP = HARDCASES / "C02_control_seg" / "control_seg.zip"
TEACHER_NAME = "2024-01-01_000000_teacher"

# Returns the chart title (without the <b> tags Streamlit adds) and the trace names of every Plotly chart.
CHART_TRACES_JS = """
() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => ({
    title: (((plot.layout || {}).title || {}).text || '').replace(/<[^>]+>/g, ''),
    names: (plot.data || []).map(trace => trace.name || '')}))
"""


def move_select_slider_to_start(page, label: str) -> None:
    """Move a Streamlit select slider to its first option with the keyboard."""
    thumb = page.locator(f'input[type="range"][aria-label="{label}"]')
    thumb.focus()
    thumb.press("Home")
    page.wait_for_timeout(500)  # the slider sends its value once the key is released
    wait_for_app(page)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    wait_for_app(page)


def test_browser_segmentation(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base_url, workspace = server
    with zipfile.ZipFile(C02_ZIP) as archive:
        photo = tmp_path / "new_shape.jpg"
        photo.write_bytes(archive.read("images/sample_07.jpg"))

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            # Pairs: upload the zip; the report and the overlaid preview appear.
            open_page(page, base_url, "segmentation")
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(C02_ZIP))
            page.get_by_text("Unpacked control_seg.zip into the segmentation dataset 'control_seg'.").wait_for()
            page.get_by_text("Preview: masks drawn on their images").wait_for()
            captions = page.locator('[data-testid="stImageCaption"]')
            captions.nth(11).wait_for()
            wait_for_app(page)
            assert captions.count() == 12
            shot(page, "segmentation_pairs")

            # Train one epoch at 128 px without augmentation.
            open_tab(page, "Train")
            page.get_by_text("Encoder stages to freeze").wait_for()
            set_slider(page, "Epochs", 1)
            move_select_slider_to_start(page, "Image size (pixels)")
            page.get_by_text("Augmentation: train on random crops").click()
            wait_for_app(page)
            page.get_by_role("button", name="Start training").click()
            wait_for_curves(page, 1)
            page.get_by_text("Validation IoU").first.wait_for(timeout=TRAINING_TIMEOUT_MS)
            wait_for_app(page)
            shot(page, "segmentation_train")
            runs = list((workspace / "segmentation" / "runs").iterdir())
            assert len(runs) == 1
            assert (runs[0] / "model.pt").is_file()

            # Results: every validation image with its true and its predicted mask.
            page.get_by_role("button", name="Next: see its masks on the validation images").click()
            page.get_by_text("Validation images, worst IoU first").wait_for()
            page.get_by_text("predicted mask").nth(3).wait_for()
            wait_for_app(page)
            captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
            assert sum(caption.endswith("predicted mask") for caption in captions) == 4
            assert sum(caption.endswith("true mask") for caption in captions) == 4
            histograms = [trace for trace in plot_traces(page) if trace["type"] == "bar"]
            assert len(histograms) == 1
            shot(page, "segmentation_results")

            # Predict: a new image gets an overlay and a downloadable mask of class ids.
            open_tab(page, "Predict")
            page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(photo))
            page.get_by_text("predicted mask on the image").wait_for()
            wait_for_app(page)
            with page.expect_download() as download_info:
                page.get_by_role("button", name="Mask (PNG)").click()
            mask = Image.open(io.BytesIO(Path(download_info.value.path()).read_bytes()))
            assert mask.mode == "P"
            assert mask.size == (128, 128)
            assert set(np.unique(np.asarray(mask))) <= {0, 1}
            page.mouse.move(0, 0)  # no tooltip in the screenshot
            shot(page, "segmentation_predict")
        finally:
            browser.close()


def test_browser_distillation(server, tmp_path):
    from playwright.sync_api import sync_playwright

    base_url, workspace = server
    # The teacher is trained through the engine, straight into the test's workspace.
    with zipfile.ZipFile(C01_ZIP) as archive:
        archive.extractall(tmp_path / "shapes")
    train(tmp_path / "shapes", TrainConfig(epochs=1), workspace / "runs" / TEACHER_NAME)

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            # Distil: one epoch, one view per image, one timed pass per speed measurement.
            open_page(page, base_url, "distillation")
            page.get_by_role("button", name="Start distillation").wait_for()
            set_slider(page, "Epochs", 1)
            set_slider(page, "Views per image", 1)
            page.get_by_text("More settings").click()
            set_slider(page, "Timed passes per speed measurement", 1)
            shot(page, "distillation_settings")
            page.get_by_role("button", name="Start distillation").click()
            wait_for_curves(page, 1)
            page.get_by_text("Both students are trained and measured.").wait_for(timeout=TRAINING_TIMEOUT_MS)
            wait_for_app(page)
            shot(page, "distillation_train")

            # Compare: the table and the charts have a row or point for each of the three models.
            page.get_by_role("button", name="Next: compare them with the teacher").click()
            page.get_by_text("The distilled student has").wait_for()
            page.locator('[data-testid="stDataFrame"]').first.wait_for()
            wait_for_app(page)
            charts = {chart["title"]: chart["names"] for chart in page.evaluate(CHART_TRACES_JS)}
            assert charts["Accuracy against speed"] == ["teacher", "distilled student", "student on labels only"]
            assert page.locator('[data-testid="stDataFrame"]').count() == 2
            shot(page, "distillation_compare")

            # Temperature explorer: the teacher's probabilities at five temperatures for a validation image.
            open_tab(page, "Temperature explorer")
            page.get_by_text("Teacher's probabilities at each temperature T").wait_for()
            wait_for_app(page)
            bars = [trace for trace in plot_traces(page) if trace["type"] == "bar"]
            assert len(bars) == 5
            assert all(trace["x"] == ["circle", "square", "triangle"] for trace in bars)
            shot(page, "distillation_temperature")
        finally:
            browser.close()
