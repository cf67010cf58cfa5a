"""Predict: classify new photos (uploaded or from the camera) with a trained run."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
from PIL import Image

from pages._common import IMAGE_FORMATS_CAPTION, TRAIN, choose_run, engine_errors, plural, require, workspace
from tlapp.charts import top_classes_figure
from tlapp.images import ImageError, load_rgb
from tlapp.runs import list_runs, load_predictor

TOP_CLASSES = 5
MAX_CHARTS = 20  # beyond this many photos, only the table shows them


def collect_inputs() -> list:
    """Return the uploaded files and the camera photo (Streamlit UploadedFile objects)."""
    upload_tab, camera_tab = st.tabs(["Upload photos", "Take a photo"])
    with upload_tab:
        # No type filter: a file that is not a readable image gets an error naming it, and a row in the table.
        uploaded = st.file_uploader("Photos to classify", accept_multiple_files=True, key="predict_files")
        st.caption(IMAGE_FORMATS_CAPTION)
    with camera_tab:
        photo = st.camera_input("Camera", key="predict_camera")
    return [*(uploaded or []), *([photo] if photo is not None else [])]


@dataclass
class Upload:
    """One uploaded file: its decoded image, or the reason it could not be read."""

    name: str
    image: Image.Image | None
    error: str = ""


def decode(files: list) -> list[Upload]:
    """Decode each file, in order; show an error naming each unreadable one."""
    uploads = []
    for file in files:
        try:
            uploads.append(Upload(file.name, load_rgb(file, name=file.name)))
        except ImageError as error:
            hint = f" {error.hint}" if error.hint else ""
            st.error(f"{file.name} was not classified: {error.reason}.{hint}", icon=":material/error:")
            uploads.append(Upload(file.name, None, error.reason))
    return uploads


def show_predictions(images: list, names: list[str], predictions: list[list[tuple[str, float]]]) -> None:
    for index, (image, name, ranked) in enumerate(zip(images, names, predictions)):
        if index == MAX_CHARTS:
            st.caption(f"The table below has the other {len(images) - MAX_CHARTS} photos.")
            break
        columns = st.columns([1, 2], vertical_alignment="center")
        columns[0].image(image, caption=name, width=320)
        with columns[1]:
            label, probability = ranked[0]
            st.markdown(f"**{label}** ({probability:.1%})")
            st.plotly_chart(top_classes_figure(ranked[:TOP_CLASSES]), key=f"prediction_{index}", config={"displayModeBar": False})


def prediction_table(uploads: list[Upload], predictions: list[list[tuple[str, float]]], classes: list[str]) -> pd.DataFrame:
    """Return one row per uploaded file, in upload order; an unreadable file has only its error.

    ``predictions`` contains the ranked classes of the readable uploads, in the same order.
    """
    ranked_lists = iter(predictions)
    rows = []
    for upload in uploads:
        row = {"file": upload.name, "predicted class": None, "probability": None, **{f"p({label})": None for label in classes}}
        if upload.image is not None:
            ranked = next(ranked_lists)
            probabilities = dict(ranked)
            row["predicted class"], row["probability"] = ranked[0]
            row.update({f"p({label})": probabilities.get(label, 0.0) for label in classes})
        row["error"] = upload.error
        rows.append(row)
    return pd.DataFrame(rows)


def show_table(table: pd.DataFrame, classes: list[str]) -> None:
    percent = st.column_config.NumberColumn(format="percent")
    formats = {"probability": percent, **{f"p({label})": percent for label in classes}}
    # An unreadable file has no prediction: its cells show blank instead of "None".
    st.dataframe(table, hide_index=True, width="stretch", column_config=formats, placeholder="")
    st.download_button(
        "Download the table (CSV)",
        table.to_csv(index=False).encode("utf-8"),
        file_name="predictions.csv",
        mime="text/csv",
        icon=":material/download:",
        key="predict_download",
    )


ws = workspace()
st.title("4. Predict")
st.markdown("Classify photos the model has never seen. The photo is prepared exactly as during training.")
with engine_errors("reading the runs"):
    runs = [run for run in list_runs(ws.runs_dir) if run.task == "classification" and run.finished]
require(bool(runs), "No trained model yet: train one first.", TRAIN, "Go to 2. Train")
run = choose_run(runs, "predict_run")
st.caption(f"Classes: {', '.join(run.classes)}")
files = collect_inputs()
if not files:
    st.info("Upload photos or take one with the camera.", icon=":material/info:")
    st.stop()

with st.spinner("Loading the model..."), engine_errors("loading the model"):
    predictor = load_predictor(run.path)
uploads = decode(files)
readable = [upload for upload in uploads if upload.image is not None]
images, names = [upload.image for upload in readable], [upload.name for upload in readable]
predictions = []
if images:
    with st.spinner(f"Classifying {plural(len(images), 'photo')}..."), engine_errors("classifying the photos"):
        predictions = predictor.predict(images, names, top=len(predictor.classes))
    show_predictions(images, names, predictions)
show_table(prediction_table(uploads, predictions, predictor.classes), predictor.classes)
