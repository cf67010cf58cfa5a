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

C02_ZIP = HARDCASES / "C02_control_seg" / "control_seg.zip"


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
