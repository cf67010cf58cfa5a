"""Segmentation: image/mask pairs, a U-Net whose encoder is a pretrained backbone, and its masks on new images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from pages._common import (
    STATUS_LABELS,
    THUMBNAIL_SIDE,
    WEIGHTS_STATUS,
    choose_run,
    dataset_chooser,
    library_picker,
    draw_job,
    engine_errors,
    epoch_history,
    follow_run,
    run_to_follow,
    format_seconds,
    image_grid,
    model_description,
    show_error,
    workspace,
)
from tlapp import backbones
from tlapp.charts import class_pixels_figure, iou_histogram_figure, segmentation_curves_figure, stages_figure
from tlapp.errors import TlappError
from tlapp.events import EpochEnd, Progress
from tlapp.images import IMAGE_EXTENSIONS, ImageError, load_rgb
from tlapp.jobs import INTERRUPTED, Job, get_manager, run_status
from tlapp.runs import Run, list_runs, load_run, read_config, write_config
from tlapp.segmentation.dataset import SegmentationData, load_segmentation_data
from tlapp.segmentation.masks import MaskConvention, display_colour
from tlapp.segmentation.model import SMP_ENCODERS, build_unet, encoder_stages
from tlapp.segmentation.predict import load_segmenter, overlay
from tlapp.segmentation.training import SegmentationConfig, train_segmentation
from tlapp.workspace import WORKSPACE, DatasetChoice, SegmentationStore, dataset_fingerprint

UPLOAD_TYPES = sorted(extension.lstrip(".") for extension in IMAGE_EXTENSIONS)
PAIRS_TAB, TRAIN_TAB, RESULTS_TAB, PREDICT_TAB = TABS = ("Pairs", "Train", "Results", "Predict")
ZIP_SOURCE, FILES_SOURCE, LIBRARY_SOURCE = SOURCES = (
    "Upload a zip",
    "Upload images and masks",
    "Instructor's library",
)
JOB_KIND = "segment"
PREVIEW_PAIRS = 12
GALLERY_IMAGES = 8
GALLERY_SIDE = 256
SWATCH_SIDE = 36
LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BATCH_SIZES = [2, 4, 8, 16, 32]
IMAGE_SIZES = list(range(128, 513, 32))
STATIC_CHART = {"displayModeBar": False}



# Columns of the runs table; a value a run does not have (yet) shows as a dash.
RUNS_COLUMNS = {
    "run": st.column_config.TextColumn(),
    "status": st.column_config.TextColumn(help="interrupted: the server restarted while the run was going"),
    "backbone": st.column_config.TextColumn(),
    "frozen stages": st.column_config.TextColumn("frozen", help="Encoder stages that kept their ImageNet weights ('all' until the run has started)"),
    "image size": st.column_config.NumberColumn(),
    "epochs": st.column_config.NumberColumn(help="Epochs run, or planned while the run is going"),
    "augmentation": st.column_config.TextColumn("augment"),
    "validation IoU": st.column_config.NumberColumn(format="percent"),
    "training time": st.column_config.TextColumn("time"),
}


# --- shared helpers -----------------------------------------------------------------------------


def go_to_tab(tab: str) -> None:
    """Button callback: open another tab of this page (tabs with a key keep their state there)."""
    st.session_state["seg_tab"] = tab


def require_here(condition: bool, message: str, tab: str, label: str) -> None:
    """End the tab with ``message`` and a button to ``tab`` unless ``condition`` holds."""
    if condition:
        return
    st.info(message, icon=":material/info:")
    st.button(label, key=f"seg_go_{tab}", icon=":material/arrow_forward:", on_click=go_to_tab, args=(tab,))
    st.stop()


def bump(counter: str) -> None:
    """Give an uploader a new key, which empties it once its files are stored."""
    st.session_state[counter] = st.session_state.get(counter, 0) + 1


@st.cache_resource(max_entries=8, show_spinner=False)
def _load_pairs_cached(path: str, fingerprint: tuple, drop_outline_masks: bool) -> SegmentationData:
    return load_segmentation_data(path, drop_outline_masks=drop_outline_masks)


def load_pairs(path: Path, drop_outline_masks: bool = False) -> SegmentationData:
    """Pair and check a dataset with the engine, cached until a file in it changes.

    The cached object is shared by every session, so pages must not rename its classes: the
    names typed on the page go into the run's configuration instead.
    """
    return _load_pairs_cached(str(path), dataset_fingerprint(path), drop_outline_masks)


@st.cache_resource(max_entries=512, show_spinner=False)
def _mask_overlay_cached(image_path: str, mask_path: str, mask_name: str, convention_json: str, max_side: int, modified: tuple) -> Image.Image | None:
    convention = MaskConvention.from_dict(json.loads(convention_json))
    try:
        image = load_rgb(image_path, max_side=max_side)
        target = convention.read_target(Path(mask_path), mask_name)
    except TlappError:
        return None
    small = np.asarray(Image.fromarray(target).resize(image.size, Image.NEAREST))
    return overlay(image, small, convention.class_colours)


def mask_overlay(image_path: str | Path, mask_path: str | Path, mask_name: str, convention: MaskConvention, max_side: int = THUMBNAIL_SIDE) -> Image.Image | None:
    """Return a small copy of an image with its true mask drawn on it, or None when a file is unreadable or gone."""
    try:
        modified = (Path(image_path).stat().st_mtime, Path(mask_path).stat().st_mtime)
    except OSError:
        return None
    return _mask_overlay_cached(str(image_path), str(mask_path), mask_name, json.dumps(convention.to_dict()), max_side, modified)


def mask_png(mask: np.ndarray, colours: list) -> bytes:
    """Encode a class-index mask as a palette PNG: pixel values are class ids, shown in the class colours.

    The segmentation engine reads palette masks by index, so the file works as a training mask too.
    """
    picture = Image.fromarray(mask.astype(np.uint8), "P")
    table = [tuple(colours[index][:3]) if index < len(colours) else display_colour(index) for index in range(256)]
    picture.putpalette([value for colour in table for value in colour])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def busy_jobs(ws_id: str) -> list[Job]:
    """Return this workspace's queued or running jobs of any kind: one at a time per workspace."""
    return [job for job in get_manager().jobs(owner=ws_id) if job.active]


def finished_runs(store: SegmentationStore) -> list[Run]:
    with engine_errors("reading the segmentation runs"):
        return [run for run in list_runs(store.runs_dir) if run.task == "segmentation" and run.finished]


# --- Pairs tab: getting image/mask pairs --------------------------------------------------------


def show_zip_upload(store: SegmentationStore) -> None:
    st.markdown(
        "Put the images in an `images/` folder and their masks, with the same file names, in a `masks/` "
        "folder beside it (a `_mask` suffix on the mask names is fine). Zip both folders together and "
        "upload the zip."
    )
    key = f"seg_zip_upload_{st.session_state.get('seg_zip_counter', 0)}"
    uploaded = st.file_uploader("Zip with images/ and masks/", type=["zip"], key=key)
    if uploaded is None:
        return
    with st.spinner(f"Unpacking {uploaded.name}..."), engine_errors(f"unpacking {uploaded.name}", stop=False):
        name = store.save_zip(uploaded.name, uploaded)
        store.select_dataset(DatasetChoice(WORKSPACE, name, store.datasets_dir / name))
        st.session_state["seg_notice"] = f"Unpacked {uploaded.name} into the segmentation dataset '{name}'."
        bump("seg_zip_counter")
        st.rerun()


def show_files_upload(store: SegmentationStore) -> None:
    st.markdown(
        "Drop the images on the left and their masks on the right (you can select many files at once). "
        "Each mask needs the same file name as its image, apart from the extension or a `_mask` suffix. "
        "A file with a name already in the dataset replaces the stored one."
    )
    counter = st.session_state.get("seg_files_counter", 0)
    name = st.text_input("Dataset name", value="my_pairs", key="seg_files_dataset")
    columns = st.columns(2)
    images = columns[0].file_uploader("Images", type=UPLOAD_TYPES, accept_multiple_files=True, key=f"seg_images_{counter}")
    masks = columns[1].file_uploader("Masks", type=UPLOAD_TYPES, accept_multiple_files=True, key=f"seg_masks_{counter}")
    if not st.button("Save these files", key="seg_files_save", icon=":material/upload:", disabled=not (images or masks)):
        return
    with st.spinner("Saving the files..."), engine_errors("saving the files", stop=False):
        result = store.add_files(name, [(file.name, file) for file in images or []], [(file.name, file) for file in masks or []])
        saved_name = store.dataset_dir(name).name
        store.select_dataset(DatasetChoice(WORKSPACE, saved_name, store.datasets_dir / saved_name))
        notice = f"Saved {len(result.images)} images and {len(result.masks)} masks in '{saved_name}'."
        if result.replaced:
            notice += f" {len(result.replaced)} replaced files of the same name."
        st.session_state["seg_notice"] = notice
        st.session_state["seg_rejected"] = result.rejected
        bump("seg_files_counter")
        st.rerun()


def show_notices() -> None:
    notice = st.session_state.pop("seg_notice", None)
    if notice:
        st.success(notice, icon=":material/check_circle:")
    rejected = st.session_state.pop("seg_rejected", None)
    if rejected:
        st.warning(f"{len(rejected)} files were not saved:", icon=":material/warning:")
        st.dataframe(pd.DataFrame(rejected).rename(columns={"file": "File", "reason": "Reason"}), hide_index=True)


def load_chosen(choice: DatasetChoice) -> SegmentationData | None:
    """Load the chosen dataset, showing the engine's error (and keeping the page alive) when it fails."""
    try:
        with st.spinner(f"Pairing and checking every image and mask of '{choice.name}'..."):
            return load_pairs(choice.path, drops_outlines(choice))
    except TlappError as error:
        show_error(error)
        return None


def class_name_key(choice: DatasetChoice, index: int) -> str:
    return f"seg_class_{choice.source}_{choice.name}_{index}"


def outlines_key(choice: DatasetChoice) -> str:
    return f"seg_drop_outlines_{choice.source}_{choice.name}"


def drops_outlines(choice: DatasetChoice) -> bool:
    """Return whether the user chose to leave out this dataset's masks that look like outlines."""
    return bool(st.session_state.get(outlines_key(choice), False))


def keep_input(key: str) -> None:
    """Copy an input of the Pairs tab into a plain session key, which survives while the tab is closed.

    Streamlit drops the state of widgets that a run does not draw, and the Train tab runs without
    the Pairs tab's inputs.
    """
    st.session_state[key] = st.session_state[f"{key}_input"]


def chosen_class_names(choice: DatasetChoice, data: SegmentationData) -> list[str]:
    """Return the class names typed on the Pairs tab, or the names the engine found."""
    return [st.session_state.get(class_name_key(choice, index), name) for index, name in enumerate(data.classes)]


def class_name_problem(names: list[str]) -> str | None:
    if any(not name.strip() for name in names):
        return "Every class needs a name."
    if len({name.strip() for name in names}) != len(names):
        return "Two classes have the same name."
    return None


def show_report(choice: DatasetChoice, data: SegmentationData) -> None:
    report = data.report
    columns = st.columns(4)
    columns[0].metric("Pairs", report.num_pairs)
    columns[1].metric("Classes", len(report.classes))
    columns[2].metric("Training / validation", f"{len(data.train)} / {len(data.val)}")
    columns[3].metric("Problems", len(report.problems), help="Files left out because they could not be paired or read.")
    st.caption(
        f"Layout: {report.layout}. Validation split: random, 20 % of the pairs; the model never trains on them, "
        "so they measure how it does on new images."
    )
    st.info(f"**Masks read as** {report.convention}", icon=":material/palette:")
    for warning in report.warnings:
        st.warning(warning, icon=":material/warning:")
    if report.outline_masks:
        key = outlines_key(choice)
        st.checkbox(
            f"Leave out the {len(report.outline_masks)} masks that look like outlines",
            value=drops_outlines(choice),
            key=f"{key}_input",
            on_change=keep_input,
            args=(key,),
            help="Their pairs are then listed as problems and not used for training or validation.",
        )

    st.subheader("Classes")
    st.caption("Rename the classes if you like: the names are stored with the run and shown in the results.")
    colours = report.class_colours
    names = chosen_class_names(choice, data)
    for index, name in enumerate(names):
        cells = st.columns([1, 6, 6], vertical_alignment="bottom")
        colour = colours[index] if index < len(colours) else [128, 128, 128]
        cells[0].image(Image.new("RGB", (SWATCH_SIDE, SWATCH_SIDE), tuple(colour[:3])), width=SWATCH_SIDE)
        key = class_name_key(choice, index)
        cells[1].text_input(f"Name of class {index}", value=name, key=f"{key}_input", on_change=keep_input, args=(key,))
        in_files = _mask_value_text(report, index)
        cells[2].caption(in_files)
    problem = class_name_problem(names)
    if problem:
        st.error(f"{problem} Training starts once every class has its own name.", icon=":material/error:")
    st.plotly_chart(class_pixels_figure(report.class_pixels, colours), key="seg_class_pixels", config=STATIC_CHART)

    show_preview(data)
    if report.problems:
        st.subheader(f"Problems ({len(report.problems)})")
        st.caption("These files are left out. Every pair counted above is used.")
        st.dataframe(
            pd.DataFrame(report.problems).rename(columns={"file": "File", "reason": "Reason"}), hide_index=True, width="stretch"
        )
    st.button("Next: train a model on these pairs", key="seg_to_train", icon=":material/arrow_forward:", on_click=go_to_tab, args=(TRAIN_TAB,))


def _mask_value_text(report, index: int) -> str:
    """Describe how class ``index`` appears in the mask files, when the files use colours."""
    if report.mask_colours and index < len(report.mask_colours):
        red, green, blue = report.mask_colours[index][:3]
        return f"drawn as RGB ({red}, {green}, {blue}) in the mask files"
    pixels = list(report.class_pixels.values())
    return f"{pixels[index]:,} pixels in the masks" if index < len(pixels) else ""


def show_preview(data: SegmentationData) -> None:
    st.subheader("Preview: masks drawn on their images")
    shown = data.pairs[:PREVIEW_PAIRS]
    items = [
        (mask_overlay(pair.image, pair.mask, pair.mask_relpath, data.convention), pair.image_relpath)
        for pair in shown
    ]
    image_grid(items)
    if len(data.pairs) > len(shown):
        st.caption(f"The first {len(shown)} of {len(data.pairs)} pairs.")


def show_pairs_tab(store: SegmentationStore) -> None:
    source = st.radio("How to add image/mask pairs", SOURCES, horizontal=True, key="seg_source")
    if source == ZIP_SOURCE:
        show_zip_upload(store)
    elif source == FILES_SOURCE:
        show_files_upload(store)
    else:
        library_picker(
            store, store.workspace.library(), "seg_library",
            "Datasets prepared by the instructor. They are shared and read-only; those without masks cannot be used here.",
            lambda name: st.session_state.update(seg_notice=f"Using the library dataset '{name}'."),
        )
    st.divider()
    st.header("Your segmentation dataset")
    choice = dataset_chooser(store, "seg_chooser", "Dataset to segment", lambda name: st.session_state.update(seg_notice=f"Deleted the segmentation dataset '{name}'."))
    if choice is None:
        st.info("No dataset chosen yet: upload pairs or pick a library dataset above.", icon=":material/info:")
        return
    data = load_chosen(choice)
    if data is None:
        st.caption("Your files are kept. Fix them (for example, upload the missing masks) and the check runs again.")
        return
    show_report(choice, data)


# --- Train tab ----------------------------------------------------------------------------------


@st.cache_resource(max_entries=8, show_spinner=False)
def unet_layout(backbone: str) -> tuple[list[str], list[int], int, int]:
    """Return (encoder stage names, parameters per stage, decoder parameters, head parameters) of a 2-class U-Net."""
    model = build_unet(backbone, 2, pretrained=False)
    stages = encoder_stages(model, backbone)
    names = [name for name, _ in stages]
    params = [sum(p.numel() for module in modules for p in module.parameters()) for _, modules in stages]
    decoder = sum(p.numel() for p in model.decoder.parameters())
    head = sum(p.numel() for p in model.segmentation_head.parameters())
    return names, params, decoder, head


def choose_backbone() -> backbones.BackboneSpec:
    names = [name for name in SMP_ENCODERS if name in backbones.REGISTRY]
    default = backbones.DEFAULT_BACKBONE if backbones.DEFAULT_BACKBONE in names else names[0]
    name = st.selectbox(
        "Backbone (the pretrained encoder of the U-Net)",
        names,
        index=names.index(default),
        format_func=lambda key: f"{key}: {backbones.REGISTRY[key].description}",
        key="seg_backbone",
    )
    spec = backbones.get_spec(name)
    status = spec.weights.status()
    st.caption(f"ImageNet weights: {WEIGHTS_STATUS.get(status, status)}.")
    return spec


def choose_freezing(spec: backbones.BackboneSpec, num_classes: int) -> int:
    with engine_errors(f"building a U-Net on {spec.name}"):
        stage_names, stage_params, decoder, head = unet_layout(spec.name)
    num_stages = len(stage_names)
    frozen = st.slider(
        "Encoder stages to freeze",
        min_value=0,
        max_value=num_stages,
        value=num_stages,
        key=f"seg_freeze_{spec.name}",
        help="Frozen stages keep their ImageNet weights. The rest of the encoder, and the new decoder, learn from your masks.",
    )
    # The head of a 2-class U-Net, scaled to this dataset's classes (one 3x3 filter per class).
    head = head // 2 * num_classes
    trainable = decoder + head + sum(stage_params[frozen:])
    total = decoder + head + sum(stage_params)
    st.caption(
        f"Training **{trainable:,}** of {total:,} parameters ({trainable / total:.1%}). "
        + (
            "Only the new decoder learns: fast, and usually enough for a few dozen images."
            if frozen == num_stages
            else "Later encoder stages adapt to your images too: slower, needs more images."
        )
    )
    figure = stages_figure([*stage_names, "U-Net decoder"], [*stage_params, decoder], frozen, head)
    st.plotly_chart(figure, key="seg_stages_figure", config=STATIC_CHART)
    return frozen


def choose_training() -> dict:
    defaults = SegmentationConfig()
    columns = st.columns(2)
    epochs = columns[0].slider("Epochs", 1, 50, defaults.epochs, key="seg_epochs", help="How many times training sees every image.")
    learning_rate = columns[1].select_slider(
        "Learning rate", sorted({*LEARNING_RATES, defaults.learning_rate}), value=defaults.learning_rate, key="seg_lr",
        format_func=lambda value: f"{value:g}",
        help="Step size of the decoder. Fine-tuned pretrained encoder stages use a tenth of it.",
    )
    columns = st.columns(2)
    batch_size = columns[0].select_slider(
        "Batch size", sorted({*BATCH_SIZES, defaults.batch_size}), value=defaults.batch_size, key="seg_batch",
        help="Images per training step.",
    )
    image_size = columns[1].select_slider(
        "Image size (pixels)", sorted({*IMAGE_SIZES, defaults.image_size}), value=defaults.image_size, key="seg_image_size",
        help="Images are resized to a square of this side for training. Larger sees finer detail but is slower.",
    )
    augment = st.checkbox(
        "Augmentation: train on random crops, flips and colour changes (applied to image and mask together)",
        value=defaults.augment,
        key="seg_augment",
        help=f"Helps when you have few images. The frozen stages then run once per random version ({defaults.augment_views} per image).",
    )
    return {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "image_size": image_size, "augment": augment}


def start_run(ws_id: str, store: SegmentationStore, dataset: Path, config: SegmentationConfig) -> None:
    with engine_errors("starting the run"):
        config.validate()
        run_dir = store.new_run_dir(config.backbone)
        write_config(run_dir, config.to_dict())
        get_manager().submit(JOB_KIND, run_dir, lambda stop: train_segmentation(dataset, config, run_dir, stop), owner=ws_id)
    st.session_state["seg_run"] = run_dir.name


def draw_run(run_dir: Path, job: Job | None, status: str) -> None:
    history = epoch_history(run_dir)
    draw_job(run_dir, job, status, draw_progress, "seg_stop", "Stops after the current batch. The best finished epoch, if any, is kept as the run's model.")
    if history:
        st.plotly_chart(segmentation_curves_figure({run_dir.name: history}), key="seg_live_curves")
    if status in ("done", "stopped") and (run_dir / "metrics.json").is_file():
        draw_result(run_dir)
    elif status == INTERRUPTED:
        st.caption("This run never finished. Start a new one; this folder can be deleted on the Results tab.")


def draw_progress(events: list) -> None:
    progress = next((event for event in reversed(events) if isinstance(event, Progress)), None)
    last_epoch = next((event for event in reversed(events) if isinstance(event, EpochEnd)), None)
    if progress is None:
        st.progress(0.0, text="Pairing the images and masks, building the U-Net...")
        return
    fraction = progress.done / progress.total if progress.total else 0.0
    steps = {
        "download": "Downloading the ImageNet weights",
        "decode": "Reading the images and masks",
        "features": "Running the frozen encoder stages once per image (caching their features)",
        "train": f"Training: {progress.message}",
        "evaluate": "Scoring the best epoch on the validation images",
    }
    text = steps.get(progress.stage, progress.message or progress.stage)
    if progress.eta is not None:
        text += f" · about {format_seconds(progress.eta)} left"
    if last_epoch is not None and progress.stage == "train":
        iou = last_epoch.extra.get("val_iou")
        if iou is not None:
            text += f" · last validation IoU {iou:.1%}"
    st.progress(min(1.0, fraction), text=text)


def draw_result(run_dir: Path) -> None:
    with engine_errors("reading the run", stop=False):
        metrics = load_run(run_dir).metrics
        show_scores(metrics)
        # The button sits in the live fragment, whose reruns leave the tabs alone: rerun the page.
        if st.button("Next: see its masks on the validation images", key="seg_to_results", icon=":material/arrow_forward:", on_click=go_to_tab, args=(RESULTS_TAB,)):
            st.rerun(scope="app")


def show_scores(metrics: dict) -> None:
    columns = st.columns(4)
    columns[0].metric("Validation IoU", _percent(metrics.get("val_iou")), help="Overlap of predicted and true object pixels (intersection over union), over all validation images.")
    columns[1].metric("Dice", _percent(metrics.get("val_dice")), help="2 × overlap / (predicted + true object pixels); always at least the IoU.")
    columns[2].metric("Pixel accuracy", _percent(metrics.get("val_pixel_accuracy")), help="Share of pixels with the right class. A large background makes it look good even when objects are missed.")
    columns[3].metric("Best epoch", f"{metrics.get('best_epoch', '?')} of {metrics.get('epochs_run', '?')}")
    st.caption(f"Training time: {format_seconds(metrics.get('train_seconds'))}.")


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def show_train_tab(ws_id: str, store: SegmentationStore) -> None:
    choice = store.selected_dataset()
    require_here(choice is not None, "Choose a segmentation dataset first.", PAIRS_TAB, "Go to the Pairs tab")
    data = load_chosen(choice)
    require_here(data is not None, "Fix the dataset or choose another one.", PAIRS_TAB, "Go to the Pairs tab")
    names = chosen_class_names(choice, data)
    st.markdown(
        f"Dataset **{choice.label}**: {len(data.train)} training and {len(data.val)} validation pairs; "
        f"classes {', '.join(names)}."
    )
    settings, options_column = st.columns([1, 1], gap="large")
    with settings:
        spec = choose_backbone()
        frozen = choose_freezing(spec, len(names))
    with options_column:
        options = choose_training()

    busy = busy_jobs(ws_id)
    problem = class_name_problem(names)
    if st.button("Start training", type="primary", icon=":material/play_arrow:", disabled=bool(busy) or problem is not None, key="seg_start"):
        config = SegmentationConfig(
            backbone=spec.name,
            freeze=frozen,
            drop_outline_masks=drops_outlines(choice),
            class_names=[name.strip() for name in names] if names != data.classes else None,
            **options,
        )
        start_run(ws_id, store, choice.path, config)
        st.rerun()
    if busy:
        st.caption("One run at a time per workspace: wait for the current one or stop it.")
    if problem:
        st.caption(f"{problem} Fix the class names on the Pairs tab.")

    followed = run_to_follow(ws_id, JOB_KIND, store.runs_dir, "seg_run", lambda: next(iter(store.run_dirs()), None))
    if followed is not None:
        st.divider()
        st.header("Current run")
        follow_run(followed, draw_run)


# --- Results tab --------------------------------------------------------------------------------


def _run_label(run: Run) -> str:
    iou = run.metrics.get("val_iou")
    details = model_description(run)
    return f"{run.name} ({details}, IoU {iou:.1%})" if iou is not None else f"{run.name} ({details})"


def show_runs_table(store: SegmentationStore) -> None:
    rows = [_run_row(run_dir) for run_dir in store.run_dirs()]
    table = pd.DataFrame(rows, columns=list(RUNS_COLUMNS))
    for column in ("image size", "epochs"):
        table[column] = table[column].astype("Int64")
    table["validation IoU"] = table["validation IoU"].astype("Float64")
    st.dataframe(table, hide_index=True, width="stretch", column_config=RUNS_COLUMNS)


def _run_row(run_dir: Path) -> dict:
    """Return a run's row from its run.json, or from the configuration it started with while it has none."""
    row = {"run": run_dir.name, "status": STATUS_LABELS.get(run_status(run_dir), "")}
    try:
        run = load_run(run_dir)
    except (TlappError, ValueError, OSError):
        run = None
    if run is not None:
        config = run.info.get("config", {})
        backbone, frozen, image_size = run.info.get("backbone"), run.info.get("frozen_stages"), run.info.get("image_size")
        epochs = run.metrics.get("epochs_run")
    else:
        config = read_config(run_dir)
        backbone, frozen, image_size = config.get("backbone"), config.get("freeze"), config.get("image_size")
        epochs = config.get("epochs")
    augment = config.get("augment")
    augmentation = None
    if augment is not None:
        augmentation = "yes" if augment else "no"
    row.update(
        {
            "backbone": backbone,
            "frozen stages": None if frozen is None else str(frozen),
            "image size": image_size,
            "epochs": epochs,
            "augmentation": augmentation,
            "validation IoU": run.metrics.get("val_iou") if run else None,
            "training time": format_seconds(run.metrics["train_seconds"]) if run and "train_seconds" in run.metrics else None,
        }
    )
    return row


@st.cache_resource(max_entries=256, show_spinner=False)
def _prediction_overlay_cached(run_dir: str, model_time: float, image_path: str, modified: float) -> Image.Image | None:
    segmenter = load_segmenter(run_dir)
    try:
        picture = segmenter.load_image(image_path)
    except ImageError:
        return None
    mask = segmenter.predict(picture)
    shown = segmenter.overlay(picture, mask)
    shown.thumbnail((THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
    return shown


def prediction_overlay(run: Run, image_path: str) -> Image.Image | None:
    """Return the run's predicted mask drawn on a validation image, or None when the image is gone."""
    try:
        modified = Path(image_path).stat().st_mtime
        model_time = (run.path / "model.pt").stat().st_mtime
    except OSError:
        return None
    return _prediction_overlay_cached(str(run.path), model_time, image_path, modified)


def show_gallery(run: Run) -> None:
    samples = sorted(run.evaluation.get("samples", []), key=lambda sample: sample["iou"])
    st.subheader("Validation images, worst IoU first")
    st.caption(
        "Each row: the image with its true mask, then with the mask the model predicts. "
        "Look for missed objects, false detections or masks that look wrong themselves."
    )
    convention = MaskConvention.from_dict(run.info["mask_convention"])
    shown = samples[:GALLERY_IMAGES]
    with st.spinner(f"Predicting the masks of {len(shown)} validation images..."), engine_errors("predicting the validation masks", stop=False):
        for sample in shown:
            cells = st.columns([2, 2, 3], vertical_alignment="center")
            true = mask_overlay(sample["file"], sample["mask"], sample["mask_relpath"], convention, THUMBNAIL_SIDE * 2)
            predicted = prediction_overlay(run, sample["file"])
            for cell, image, caption in ((cells[0], true, "true mask"), (cells[1], predicted, "predicted mask")):
                if image is None:
                    cell.caption(f"(cannot show {sample['relpath']}: the file is gone or unreadable)")
                else:
                    cell.image(image, caption=f"{sample['relpath']}: {caption}", width=GALLERY_SIDE)
            cells[2].metric("IoU", f"{sample['iou']:.1%}")
            cells[2].caption(f"Dice {sample['dice']:.1%}")
    if len(samples) > len(shown):
        st.caption(f"Showing the {len(shown)} with the lowest IoU of {len(samples)} validation images.")


def show_per_class(run: Run) -> None:
    per_class = run.evaluation.get("per_class", {})
    if not per_class:
        return
    rows = [{"class": name, "IoU": scores.get("iou"), "Dice": scores.get("dice"), "pixels": scores.get("pixels")} for name, scores in per_class.items()]
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={"IoU": percent, "Dice": percent})


def show_results_tab(store: SegmentationStore) -> None:
    runs = finished_runs(store)
    if store.run_dirs():
        show_runs_table(store)
    require_here(bool(runs), "No finished segmentation run yet: train one first.", TRAIN_TAB, "Go to the Train tab")
    run = choose_run(runs, "seg_results_run", started_key="seg_run", label=_run_label)
    show_scores(run.metrics)
    show_per_class(run)
    samples = run.evaluation.get("samples", [])
    if samples:
        st.plotly_chart(iou_histogram_figure([sample["iou"] for sample in samples]), key="seg_iou_histogram", config=STATIC_CHART)
        show_gallery(run)
    with st.expander("Training curves of this run"):
        st.plotly_chart(segmentation_curves_figure({run.name: run.history}), key="seg_result_curves")
    with st.expander("Delete a run"):
        finished = [path.name for path in store.run_dirs() if get_manager().active(path) is None]
        name = st.selectbox("Run to delete", finished, key="seg_delete_pick")
        if name and st.button("Delete this run", key="seg_delete", icon=":material/delete:"):
            with engine_errors("deleting the run"):
                store.delete_run(name)
            st.rerun()
    st.button("Next: segment new images", key="seg_to_predict", icon=":material/arrow_forward:", on_click=go_to_tab, args=(PREDICT_TAB,))


# --- Predict tab --------------------------------------------------------------------------------


def show_predict_tab(store: SegmentationStore) -> None:
    runs = finished_runs(store)
    require_here(bool(runs), "No trained segmentation model yet: train one first.", TRAIN_TAB, "Go to the Train tab")
    run = choose_run(runs, "seg_predict_run", started_key="seg_run", label=_run_label)
    st.caption(f"Classes: {', '.join(run.classes)}")
    files = st.file_uploader("Images to segment", type=UPLOAD_TYPES, accept_multiple_files=True, key="seg_predict_files")
    if not files:
        st.info("Upload images the model has never seen.", icon=":material/info:")
        return
    with st.spinner("Loading the model..."), engine_errors("loading the model"):
        segmenter = load_segmenter(run.path)
    for index, file in enumerate(files):
        try:
            picture = segmenter.load_image(file.getvalue(), file.name)
        except ImageError as error:
            hint = f" {error.hint}" if error.hint else ""
            st.error(f"{file.name} was not segmented: {error.reason}.{hint}", icon=":material/error:")
            continue
        with st.spinner(f"Segmenting {file.name}..."), engine_errors(f"segmenting {file.name}", stop=False):
            mask = segmenter.predict(picture)
            show_prediction(index, file.name, picture, mask, segmenter)


def show_prediction(index: int, name: str, picture: Image.Image, mask: np.ndarray, segmenter) -> None:
    st.markdown(f"**{name}** ({picture.width}×{picture.height} pixels)")
    cells = st.columns([2, 2, 3])
    cells[0].image(segmenter.overlay(picture, mask), caption="predicted mask on the image", width=GALLERY_SIDE)
    cells[1].image(segmenter.colorize(mask), caption="predicted mask", width=GALLERY_SIDE)
    counts = np.bincount(mask.ravel(), minlength=len(segmenter.classes))
    with cells[2]:
        for class_index, label in enumerate(segmenter.classes):
            st.caption(f"{label}: {counts[class_index] / mask.size:.1%} of the pixels")
        st.download_button(
            "Mask (PNG)",
            mask_png(mask, segmenter.class_colours),
            file_name=f"{Path(name).stem}_mask.png",
            mime="image/png",
            icon=":material/download:",
            key=f"seg_download_{index}",
            on_click="ignore",
            help="A palette PNG: each pixel's value is its class number (0 = background), drawn in the class colours.",
        )


# --- the page -----------------------------------------------------------------------------------

ws = workspace()
store = SegmentationStore(ws)
st.title("Segmentation")
st.markdown(
    "Teach a network to mark, pixel by pixel, where the objects are. It learns from images paired with "
    "**masks**: pictures of the same size whose pixel values say which class each pixel belongs to. "
    "The U-Net used here reuses a pretrained backbone as its **encoder** and trains a new **decoder** "
    "that turns the encoder's features back into a full-size mask."
)
show_notices()
# Tabs with a key keep the open tab across reruns and run only its code.
pairs_tab, train_tab, results_tab, predict_tab = st.tabs(TABS, key="seg_tab", on_change="rerun")
if pairs_tab.open:
    with pairs_tab:
        show_pairs_tab(store)
if train_tab.open:
    with train_tab:
        show_train_tab(ws.id, store)
if results_tab.open:
    with results_tab:
        show_results_tab(store)
if predict_tab.open:
    with predict_tab:
        show_predict_tab(store)
