"""tlapp's web app: `streamlit run app.py`. This file only declares the pages; each lives in pages/."""

import logging
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent

# Pages written for other tasks join the navigation once their file exists.
OPTIONAL_PAGES = [
    ("pages/segmentation.py", "Segmentation", ":material/layers:"),
    ("pages/distillation.py", "Distillation", ":material/compress:"),
]


def configure_logging() -> None:
    """Send tlapp's log records to the server's console once per process."""
    logger = logging.getLogger("tlapp")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def build_navigation():
    pages = [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/data.py", title="1. Data", icon=":material/photo_library:"),
        st.Page("pages/train.py", title="2. Train", icon=":material/model_training:"),
        st.Page("pages/evaluate.py", title="3. Evaluate", icon=":material/grid_on:"),
        st.Page("pages/predict.py", title="4. Predict", icon=":material/image_search:"),
    ]
    for path, title, icon in OPTIONAL_PAGES:
        if (HERE / path).is_file():
            pages.append(st.Page(path, title=title, icon=icon))
    return st.navigation(pages)


configure_logging()
# An emoji icon is drawn in the browser; a Material icon would be fetched from fonts.gstatic.com, which fails offline.
st.set_page_config(page_title="tlapp: transfer learning studio", page_icon="\N{BRAIN}", layout="wide")
build_navigation().run()
