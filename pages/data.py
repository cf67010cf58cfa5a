"""Data: upload a zip, build classes photo by photo, or pick a library dataset; then see its report."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._common import TRAIN, engine_errors, image_grid, link, load_dataset, show_error, thumbnail, workspace
from tlapp.charts import class_counts_figure
from tlapp.datasets import DatasetError
from tlapp.errors import TlappError
from tlapp.images import IMAGE_EXTENSIONS
from tlapp.workspace import WORKSPACE, DatasetChoice, Workspace

UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
EXAMPLES_PER_CLASS = 6
NEW_DATASET = "New dataset"
ZIP_TAB, BUILDER_TAB, LIBRARY_TAB = TABS = ("Upload a zip", "Build class by class", "Instructor's library")


def bump(counter: str) -> None:
    """Give an uploader a new key, which empties it once its files are stored."""
    st.session_state[counter] = st.session_state.get(counter, 0) + 1


def show_zip_upload(ws: Workspace) -> None:
    st.markdown(
        "Put the photos of each class in its own folder, named after the class "
        "(`cats/`, `dogs/`...), zip the folders together and upload the zip. "
        "A folder with `train/` and `val/` inside is used as a ready-made split."
    )
    key = f"zip_upload_{st.session_state.get('zip_counter', 0)}"
    uploaded = st.file_uploader("Zip of class folders", type=["zip"], key=key)
    if uploaded is None:
        return
    with st.spinner(f"Unpacking {uploaded.name}..."), engine_errors(f"unpacking {uploaded.name}", stop=False):
        name = ws.save_zip(uploaded.name, uploaded)
        ws.select_dataset(DatasetChoice(WORKSPACE, name, ws.datasets_dir / name))
        st.session_state["data_notice"] = f"Unpacked {uploaded.name} into the dataset '{name}'."
        bump("zip_counter")
        st.rerun()


def show_class_builder(ws: Workspace) -> None:
    st.markdown(
        "Create a class for each kind of thing you want to recognise, then drop its photos in "
        "(you can select many files at once). Aim for at least 20 photos per class."
    )
    buildable = [name for name in ws.list_datasets() if ws.class_root(name) is not None]
    options = [NEW_DATASET, *buildable]
    # A dataset created by "Add class" becomes the selection on the next run.
    pending = st.session_state.pop("builder_pending", None)
    if pending in options:
        st.session_state["builder_dataset"] = pending
    elif st.session_state.get("builder_dataset") not in options:
        st.session_state["builder_dataset"] = _default_builder_choice(ws, options)
    chosen = st.selectbox("Dataset to add to", options, key="builder_dataset")
    if chosen == NEW_DATASET:
        dataset = st.text_input("Name of the new dataset", value="my_photos", key="builder_new_name")
    else:
        dataset = chosen

    with st.form("new_class", clear_on_submit=True, border=False):
        columns = st.columns([3, 1], vertical_alignment="bottom")
        class_name = columns[0].text_input("New class name", placeholder="for example: cats", key="builder_class_name")
        added = columns[1].form_submit_button("Add class", icon=":material/add:", key="builder_add_class")
        if added and class_name.strip():
            with engine_errors("creating the class", stop=False):
                label = ws.create_class(dataset, class_name)
                st.session_state["builder_pending"] = ws.dataset_dir(dataset).name
                st.session_state["data_notice"] = f"Created class '{label}' in '{dataset}'. Now add its photos."
                st.rerun()

    if dataset not in ws.list_datasets():
        return
    with engine_errors("listing the classes"):
        classes = ws.list_classes(dataset)
    for label, count in classes.items():
        show_class_uploader(ws, dataset, label, count)


def _default_builder_choice(ws: Workspace, options: list[str]) -> str:
    choice = ws.selected_dataset()
    if choice is not None and choice.source == WORKSPACE and choice.name in options:
        return choice.name
    return NEW_DATASET


def show_class_uploader(ws: Workspace, dataset: str, label: str, count: int) -> None:
    counter = f"class_counter_{dataset}_{label}"
    with st.expander(f"{label}: {count} photos (open to add more)", expanded=count < 2):
        uploaded = st.file_uploader(
            f"Photos of {label}",
            type=UPLOAD_TYPES,
            accept_multiple_files=True,
            key=f"class_upload_{dataset}_{label}_{st.session_state.get(counter, 0)}",
        )
        if not uploaded:
            return
        with st.spinner(f"Saving {len(uploaded)} photos..."), engine_errors("saving the photos", stop=False):
            result = ws.add_images(dataset, label, [(file.name, file) for file in uploaded])
            ws.select_dataset(DatasetChoice(WORKSPACE, dataset, ws.datasets_dir / dataset))
            notice = f"Added {len(result.saved)} photos to '{label}'."
            if result.duplicates:
                notice += f" {len(result.duplicates)} were already there."
            st.session_state["data_notice"] = notice
            st.session_state["data_rejected"] = result.rejected
            bump(counter)
            st.rerun()


def show_library(ws: Workspace) -> None:
    library = ws.library()
    if not library:
        st.info(
            "The instructor has not set up a dataset library on this server "
            "(a folder named by the TLAPP_DATASETS environment variable).",
            icon=":material/info:",
        )
        return
    st.markdown("Datasets prepared by the instructor. They are shared and read-only.")
    names = [choice.name for choice in library]
    name = st.selectbox("Library dataset", names, key="library_pick")
    if st.button("Use this dataset", key="library_use", icon=":material/check:"):
        choice = library[names.index(name)]
        ws.select_dataset(choice)
        st.session_state["data_notice"] = f"Using the library dataset '{choice.name}'."
        st.rerun()


def show_notices() -> None:
    notice = st.session_state.pop("data_notice", None)
    if notice:
        st.success(notice, icon=":material/check_circle:")
    rejected = st.session_state.pop("data_rejected", None)
    if rejected:
        st.warning(f"{len(rejected)} files were not added:", icon=":material/warning:")
        st.dataframe(pd.DataFrame(rejected), hide_index=True)


def show_chooser(ws: Workspace) -> DatasetChoice | None:
    """Show the dataset selectbox; return the chosen dataset."""
    choices = ws.choices()
    if not choices:
        return None
    labels = [choice.label for choice in choices]
    current = ws.selected_dataset()
    # The stored choice wins over the widget's memory: uploads and the library tab change it too.
    st.session_state["dataset_chooser"] = current.label if current else None

    def remember() -> None:
        label = st.session_state["dataset_chooser"]
        if label in labels:
            ws.select_dataset(choices[labels.index(label)])

    columns = st.columns([4, 1], vertical_alignment="bottom")
    columns[0].selectbox("Dataset to train on", labels, key="dataset_chooser", on_change=remember, placeholder="Choose a dataset")
    if current is not None and current.source == WORKSPACE:
        if columns[1].button("Delete", key="dataset_delete", icon=":material/delete:", help="Delete this dataset from your workspace"):
            with engine_errors("deleting the dataset"):
                ws.delete_dataset(current.name)
            st.session_state["data_notice"] = f"Deleted the dataset '{current.name}'."
            st.rerun()
    return current


def show_report(choice: DatasetChoice) -> None:
    try:
        with st.spinner(f"Checking every image of '{choice.name}'..."):
            collection = load_dataset(choice.path)
    except DatasetError as error:
        show_error(error)
        if error.report is not None and error.report.skipped:
            show_skipped(error.report.skipped)
        st.caption(
            "Your files are kept. Fix the dataset (for example, add a class and its photos in the "
            "'Build class by class' tab, or upload a corrected zip) and the check runs again."
        )
        st.stop()
    except TlappError as error:
        show_error(error)
        st.stop()

    report = collection.report
    columns = st.columns(4)
    columns[0].metric("Images", report.num_images)
    columns[1].metric("Classes", len(collection.classes))
    columns[2].metric("Training / validation", f"{len(collection.train)} / {len(collection.val)}")
    columns[3].metric("Skipped files", len(report.skipped))
    split = "given by the train/ and val/ folders" if report.split == "given" else "random, 20 % of each class for validation"
    st.caption(f"Validation split: {split}. The model never trains on validation images, so they measure how it does on new photos.")

    for warning in report.warnings:
        st.warning(warning, icon=":material/warning:")
    st.plotly_chart(class_counts_figure(report.classes), key="class_counts", config={"displayModeBar": False})
    show_examples(collection)
    if report.skipped:
        show_skipped(report.skipped)
    link(TRAIN, "Next: train a model on this dataset", icon=":material/arrow_forward:")


def show_examples(collection) -> None:
    st.subheader("Examples of each class")
    by_class: dict[int, list] = {index: [] for index in range(len(collection.classes))}
    for sample in collection.train + collection.val:
        if len(by_class[sample.label]) < EXAMPLES_PER_CLASS:
            by_class[sample.label].append(sample)
    for index, label in enumerate(collection.classes):
        st.markdown(f"**{label}**")
        image_grid([(thumbnail(sample.path), sample.relpath) for sample in by_class[index]], columns=EXAMPLES_PER_CLASS)


def show_skipped(skipped: list[dict]) -> None:
    st.subheader(f"Skipped files ({len(skipped)})")
    st.caption("These files are not used for training. The rest of the dataset is.")
    st.dataframe(pd.DataFrame(skipped).rename(columns={"file": "File", "reason": "Reason"}), hide_index=True, width="stretch")


ws = workspace()
st.title("1. Data")
st.markdown("Give the app labelled photos: one class per kind of thing to recognise. Choose one of three ways in.")
show_notices()
# Tabs with a key keep the open tab across reruns (after an upload, for example) and run only its code.
zip_tab, builder_tab, library_tab = st.tabs(TABS, key="data_tab", on_change="rerun")
if zip_tab.open:
    with zip_tab:
        show_zip_upload(ws)
if builder_tab.open:
    with builder_tab:
        show_class_builder(ws)
if library_tab.open:
    with library_tab:
        show_library(ws)

st.divider()
st.header("Your dataset")
chosen = show_chooser(ws)
if chosen is None:
    st.info("No dataset chosen yet: upload a zip, build classes or pick a library dataset above.", icon=":material/info:")
    st.stop()
show_report(chosen)
