"""Data: upload a zip, build classes photo by photo, or pick a library dataset; then see its report."""

from __future__ import annotations

import unicodedata

import pandas as pd
import streamlit as st

from pages._common import (
    IMAGE_FORMATS_CAPTION,
    TRAIN,
    dataset_chooser,
    library_picker,
    engine_errors,
    image_grid,
    link,
    load_dataset,
    plural,
    show_error,
    thumbnail,
    workspace,
)
from tlapp.charts import class_counts_figure
from tlapp.datasets import DatasetError
from tlapp.errors import TlappError
from tlapp.workspace import MAX_NAME_LENGTH, WORKSPACE, DatasetChoice, Workspace, dataset_fingerprint, safe_name

EXAMPLES_PER_CLASS = 6
# Rejected uploads named in the notice itself; a longer list also gets a table.
MAX_LISTED_REJECTIONS = 5
UNSAFE_NAME_RULE = "class names cannot contain / \\ : * ? \" < > | or start or end with a dot"
NEW_DATASET = "New dataset"
HIDE_STALE_CSS = "<style>[data-testid='stMain'] [data-stale='true'] {display: none;}</style>"
ZIP_TAB, BUILDER_TAB, LIBRARY_TAB = TABS = ("Upload a zip", "Build class by class", "Instructor's library")


def notify(text: str, level: str = "success") -> None:
    """Queue a message for the top of the page after the next rerun; ``level`` is success, info or warning."""
    st.session_state.setdefault("data_notices", []).append((level, text))


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
        notify(f"Unpacked {uploaded.name} into the dataset '{name}'.")
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
    if added:
        add_class(ws, dataset, class_name)

    if dataset not in ws.list_datasets():
        return
    with engine_errors("listing the classes"):
        classes = ws.list_classes(dataset)
    for label, count in classes.items():
        show_class_uploader(ws, dataset, label, count)


def add_class(ws: Workspace, dataset: str, class_name: str) -> None:
    """Create a class from the typed name, saying when the name was changed or the class existed."""
    typed = " ".join(unicodedata.normalize("NFC", class_name).split())
    if not typed:
        st.warning("Type a name for the new class first, for example 'cats'.", icon=":material/warning:")
        return
    with engine_errors("creating the class", stop=False):
        stored_dataset = safe_name(dataset, "dataset name")
        existing = ws.list_classes(stored_dataset) if stored_dataset in ws.list_datasets() else {}
        label = ws.create_class(stored_dataset, typed)
        renamed = ""
        if label != typed:
            rule = f"class names are at most {MAX_NAME_LENGTH} characters" if len(typed) > MAX_NAME_LENGTH else UNSAFE_NAME_RULE
            renamed = f" '{typed}' was saved as '{label}' because {rule}."
        if label in existing:
            notify(
                f"Class '{label}' already exists in '{stored_dataset}', so no class was created. "
                f"Photos you add to it below join the ones already there.{renamed}",
                "info",
            )
        elif renamed:
            notify(f"Created class '{label}' in '{stored_dataset}'.{renamed}", "warning")
        else:
            notify(f"Created class '{label}' in '{stored_dataset}'. Now add its photos.")
        st.session_state["builder_pending"] = stored_dataset
        st.rerun()


def _default_builder_choice(ws: Workspace, options: list[str]) -> str:
    choice = ws.selected_dataset()
    if choice is not None and choice.source == WORKSPACE and choice.name in options:
        return choice.name
    return NEW_DATASET


def show_class_uploader(ws: Workspace, dataset: str, label: str, count: int) -> None:
    counter = f"class_counter_{dataset}_{label}"
    with st.expander(f"{label}: {plural(count, 'photo')} (open to add more)", expanded=count < 2):
        # No type filter: every file reaches add_images, which names each one it cannot use and why.
        uploaded = st.file_uploader(
            f"Photos of {label}",
            accept_multiple_files=True,
            key=f"class_upload_{dataset}_{label}_{st.session_state.get(counter, 0)}",
        )
        st.caption(IMAGE_FORMATS_CAPTION)
        if not uploaded:
            return
        with st.spinner(f"Checking and saving {plural(len(uploaded), 'file')}..."), engine_errors("saving the photos", stop=False):
            result = ws.add_images(dataset, label, [(file.name, file) for file in uploaded])
            ws.select_dataset(DatasetChoice(WORKSPACE, dataset, ws.datasets_dir / dataset))
            notify(upload_notice(label, result.saved, result.duplicates, result.rejected), "warning" if result.rejected else "success")
            if len(result.rejected) > MAX_LISTED_REJECTIONS:
                st.session_state["data_rejected"] = result.rejected
            bump(counter)
            st.rerun()


def upload_notice(label: str, saved: list[str], duplicates: list[str], rejected: list[dict]) -> str:
    """Return the sentence that reports an upload: photos added, already there, and files not added with why."""
    notice = f"Added {plural(len(saved), 'photo')} to '{label}'"
    if rejected:
        listed = ", ".join(f"{entry['file']} ({entry['reason']})" for entry in rejected[:MAX_LISTED_REJECTIONS])
        more = len(rejected) - MAX_LISTED_REJECTIONS
        if more > 0:
            listed += f" and {more} more, listed in the table below"
        notice += f"; {plural(len(rejected), 'file was', 'files were')} not added: {listed}"
    notice += "."
    if duplicates:
        notice += f" {plural(len(duplicates), 'file was', 'files were')} already in the class."
    return notice


def show_notices() -> None:
    for level, text in st.session_state.pop("data_notices", []):
        if level == "warning":
            st.warning(text, icon=":material/warning:")
        elif level == "info":
            st.info(text, icon=":material/info:")
        else:
            st.success(text, icon=":material/check_circle:")
    rejected = st.session_state.pop("data_rejected", None)
    if rejected:
        st.dataframe(pd.DataFrame(rejected).rename(columns={"file": "File", "reason": "Reason"}), hide_index=True)


def show_report(choice: DatasetChoice) -> None:
    """Check the chosen dataset and show its report."""
    files = (str(choice.path), dataset_fingerprint(choice.path))
    if st.session_state.get("data_report_files") != files:
        # Streamlit keeps the previous run's elements on screen, marked data-stale, until this
        # run replaces them or ends (replacing them by an empty placeholder does not remove
        # them in Streamlit 1.67). The check below can take seconds, so the report of other
        # files would show under the new name meanwhile: hide what is stale in this run.
        st.html(HIDE_STALE_CSS)
    st.session_state["data_report_files"] = files
    try:
        with st.spinner(f"Checking every image of '{choice.name}'..."):
            collection = load_dataset(choice.path)
    except TlappError as error:
        show_dataset_problem(error)
        st.stop()
    _draw_report(collection)


def show_dataset_problem(error: TlappError) -> None:
    show_error(error)
    if not isinstance(error, DatasetError):
        return
    if error.report is not None and error.report.skipped:
        show_skipped(error.report.skipped, usable=False)
    st.caption(
        "Your files are kept. Fix the dataset (for example, add a class and its photos in the "
        "'Build class by class' tab, or upload a corrected zip) and the check runs again."
    )


def _draw_report(collection) -> None:
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


def show_skipped(skipped: list[dict], usable: bool = True) -> None:
    """List the skipped files; ``usable`` is whether the rest of the dataset can train."""
    st.subheader(f"Skipped files ({len(skipped)})")
    if usable:
        st.caption("These files are not used for training. The rest of the dataset is.")
    else:
        st.caption("These files could not be used either.")
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
        library_picker(
            ws, ws.library(), "library", "Datasets prepared by the instructor. They are shared and read-only.",
            lambda name: notify(f"Using the library dataset '{name}'."),
        )

st.divider()
st.header("Your dataset")
chosen = dataset_chooser(ws, "dataset_chooser", "Dataset to train on", lambda name: notify(f"Deleted the dataset '{name}'."))
if chosen is None:
    st.info("No dataset chosen yet: upload a zip, build classes or pick a library dataset above.", icon=":material/info:")
    st.stop()
show_report(chosen)
