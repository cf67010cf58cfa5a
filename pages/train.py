"""Train: choose a backbone and how much of it to freeze, start a run, watch it learn, compare runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from pages._common import (
    DATA,
    EVALUATE,
    WEIGHTS_STATUS,
    draw_job,
    engine_errors,
    epoch_history,
    follow_run,
    run_to_follow,
    format_seconds,
    link,
    load_dataset,
    require,
    show_error,
    workspace,
)
from tlapp import backbones
from tlapp.charts import curves_figure, stages_figure
from tlapp.datasets import ImageCollection
from tlapp.errors import TlappError
from tlapp.events import EpochEnd, Progress
from tlapp.images import load_rgb
from tlapp.jobs import INTERRUPTED, Job, get_manager, run_status
from tlapp.runs import load_run, read_config, write_config
from tlapp.training import TrainConfig, estimate_train_seconds, train_classifier
from tlapp.workspace import Workspace

LEARNING_RATES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BATCH_SIZES = [8, 16, 32, 64]
PREVIEW_VIEWS = 6
STATIC_CHART = {"displayModeBar": False}  # small charts need no zoom or download toolbar
MISSING = "–"  # shown in the runs table for a value a run does not have (yet)
# Columns of the "All runs" table. The widths (pixels) add up to 890, so the table fits beside
# the sidebar in a 1400-pixel-wide window, with the longest run and backbone names in full.
RUNS_COLUMNS = {
    "run": st.column_config.TextColumn(width=255),
    "status": st.column_config.TextColumn(width=90, help="interrupted: the server restarted while the run was going"),
    "backbone": st.column_config.TextColumn(width=185, help="(scratch): trained from random weights, without ImageNet"),
    "frozen stages": st.column_config.NumberColumn("frozen", width=60, help="Stages that kept their ImageNet weights"),
    "epochs": st.column_config.NumberColumn(width=60, help="Epochs run, or planned while the run is going"),
    "augmentation": st.column_config.TextColumn("augment", width=70),
    "validation accuracy": st.column_config.NumberColumn("val. accuracy", width=95, format="percent"),
    "training time": st.column_config.TextColumn("time", width=75),
}

# Shorter status words for the runs table, where the column help explains "interrupted".
TABLE_STATUS_LABELS = {"queued": "queued", "running": "running", "done": "finished", "stopped": "stopped", "failed": "failed", INTERRUPTED: "interrupted"}


def choose_backbone() -> backbones.BackboneSpec:
    names = list(backbones.REGISTRY)
    name = st.selectbox(
        "Backbone (the pretrained network)",
        names,
        index=names.index(backbones.DEFAULT_BACKBONE),
        format_func=lambda key: f"{key}: {backbones.REGISTRY[key].description}",
        key="train_backbone",
    )
    spec = backbones.get_spec(name)
    with st.spinner(f"Measuring {name} on this server (once)..."), engine_errors(f"measuring {name}"):
        stage_ms = backbones.measure_stage_ms(name)  # cached per process
    columns = st.columns(2)
    columns[0].metric("Parameters", f"{spec.num_params / 1e6:.1f} M")
    columns[1].metric("Input size", f"{spec.preprocessing.input_size} px")
    columns = st.columns(2)
    columns[0].metric("Speed per photo", f"{sum(stage_ms):.0f} ms", help="One forward pass on this server's CPU, measured on random images.")
    columns[1].metric("Stages", spec.num_stages)
    status = spec.weights.status()
    st.caption(f"ImageNet weights: {WEIGHTS_STATUS.get(status, status)}.")
    return spec


def choose_freezing(spec: backbones.BackboneSpec, num_classes: int) -> tuple[bool, int]:
    """Show the from-scratch switch and the freeze slider; return (pretrained, frozen stages)."""
    scratch = st.checkbox(
        "Train from scratch (random weights, no ImageNet knowledge)",
        key="train_scratch",
        help="For comparison: without pretrained weights there is nothing worth freezing, so every stage trains.",
    )
    if scratch:
        st.caption(
            "From scratch, every stage starts from random numbers and has to learn edges and textures from your "
            "photos alone: expect much lower accuracy with a few hundred photos, and a slow run."
        )
    frozen = st.slider(
        "Stages to freeze",
        min_value=0,
        max_value=spec.num_stages,
        value=0 if scratch else spec.num_stages,
        disabled=scratch,
        key=f"train_freeze_{spec.name}_{scratch}",
        help="Frozen stages keep their ImageNet weights. The rest, and the new head, learn from your photos.",
    )
    with engine_errors(f"counting the parameters of {spec.name}"):
        per_stage = backbones.stage_params(spec.name)
    head = spec.num_features * num_classes + num_classes
    trainable = head + (0 if frozen == spec.num_stages else spec.num_params - sum(per_stage[:frozen]))
    total = spec.num_params + head
    st.caption(
        f"Training **{trainable:,}** of {total:,} parameters ({trainable / total:.1%}). "
        + _freezing_advice(frozen, spec.num_stages, scratch)
    )
    st.plotly_chart(stages_figure(spec.stage_names, per_stage, frozen, head), key="stages_figure", config=STATIC_CHART)
    return not scratch, frozen


def _freezing_advice(frozen: int, num_stages: int, scratch: bool) -> str:
    if scratch:
        return "Nothing is frozen."
    if frozen == num_stages:
        return "Only the new head learns: fast, and usually enough for a few hundred photos."
    if frozen == 0:
        return "Fine-tuning everything: slowest, needs more photos, and can overfit."
    return "The later stages adapt to your photos; the early ones keep general ImageNet features."


def choose_training() -> dict:
    defaults = TrainConfig()
    columns = st.columns(3)
    epochs = columns[0].slider("Epochs", 1, 50, defaults.epochs, key="train_epochs", help="How many times training sees every photo.")
    learning_rate = columns[1].select_slider(
        "Learning rate", _with(LEARNING_RATES, defaults.learning_rate), value=defaults.learning_rate, key="train_lr",
        format_func=lambda value: f"{value:g}",
        help="Step size of the new head. Fine-tuned pretrained stages use a tenth of it.",
    )
    batch_size = columns[2].select_slider(
        "Batch size", _with(BATCH_SIZES, defaults.batch_size), value=defaults.batch_size, key="train_batch",
        help="Photos per training step.",
    )
    augment = st.checkbox(
        "Augmentation: train on random crops, flips and colour changes",
        key="train_augment",
        help="Helps when you have few photos. Caching the frozen stages takes about four times longer, once per random version of each photo.",
    )
    return {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "augment": augment}


def _with(choices: list, default) -> list:
    """Return the slider choices, with the engine's default added when it is not among them."""
    return sorted({*choices, default})


def show_augmentation_preview(spec: backbones.BackboneSpec, collection: ImageCollection) -> None:
    with st.expander("Preview augmentation on one training photo"):
        sample = collection.train[0]
        with engine_errors("preparing the preview", stop=False):
            image = load_rgb(sample.path, max_side=spec.preprocessing.resize_size * 2)
            transform = spec.preprocessing.train_transform()
            views = [_denormalise(transform(image), spec.preprocessing) for _ in range(PREVIEW_VIEWS)]
            st.caption(f"{sample.relpath}: each epoch sees a different random version of every photo.")
            st.image(views, width=150)


def _denormalise(tensor: torch.Tensor, preprocessing: backbones.Preprocessing) -> np.ndarray:
    """Undo the normalisation so a model input can be shown as a picture (H x W x 3 in 0..1)."""
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    return (tensor * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def start_run(ws: Workspace, dataset: Path, config: TrainConfig) -> None:
    with engine_errors("starting the run"):
        config.validate()
        run_dir = ws.new_run_dir(config.backbone)
        write_config(run_dir, config.to_dict())
        get_manager().submit(
            "train", run_dir, lambda stop: train_classifier(dataset, config, run_dir, stop), owner=ws.id
        )
    st.session_state["train_run"] = run_dir.name


def draw_run(run_dir: Path, job: Job | None, status: str) -> None:
    history = epoch_history(run_dir)
    draw_job(run_dir, job, status, draw_progress, "train_stop", "Stops after the current batch. The best finished epoch, if any, is kept as the run's model.")
    if history:
        st.plotly_chart(curves_figure({run_dir.name: history}), key="live_curves")
    if status in ("done", "stopped") and (run_dir / "metrics.json").is_file():
        draw_result(run_dir)
    elif status == "stopped":
        st.info("Stopped before the first epoch finished; no model was kept.", icon=":material/info:")
    elif status == INTERRUPTED:
        st.caption("This run never finished. Start a new one; this folder can be deleted below.")


def draw_progress(events: list) -> None:
    progress = next((event for event in reversed(events) if isinstance(event, Progress)), None)
    last_epoch = next((event for event in reversed(events) if isinstance(event, EpochEnd)), None)
    # The time left is the engine's estimate from its newest Progress or EpochEnd event.
    latest = next((event for event in reversed(events) if isinstance(event, (Progress, EpochEnd))), None)
    if progress is None:
        st.progress(0.0, text="Loading the dataset and the backbone...")
        return
    fraction = progress.done / progress.total if progress.total else 0.0
    steps = {
        "download": "Downloading the ImageNet weights",
        "decode": "Reading the photos",
        "features": "Running the frozen stages once per photo (caching their features)",
        "train": f"Training: {progress.message}",
        "evaluate": "Evaluating the best epoch",
    }
    text = steps.get(progress.stage, progress.message or progress.stage)
    # The last Progress event of a step has eta 0, which covers that step only, so it is left out.
    if latest.eta is not None and latest.eta >= 1:
        text += f" · about {format_seconds(latest.eta)} left"
    if last_epoch is not None and progress.stage == "train":
        text += f" · last validation accuracy {last_epoch.val_accuracy:.1%}"
    st.progress(min(1.0, fraction), text=text)


def draw_result(run_dir: Path) -> None:
    with engine_errors("reading the run", stop=False):
        run = load_run(run_dir)
        metrics = run.metrics
        columns = st.columns(4)
        columns[0].metric("Validation accuracy", f"{metrics['val_accuracy']:.1%}")
        columns[1].metric("Balanced accuracy", f"{metrics['balanced_accuracy']:.1%}")
        columns[2].metric("Best epoch", f"{metrics['best_epoch']} of {metrics['epochs_run']}")
        columns[3].metric("Training time", format_seconds(metrics["train_seconds"]))
        link(EVALUATE, "Next: see what it gets right and wrong", icon=":material/arrow_forward:")


def show_runs(ws: Workspace) -> None:
    run_dirs = ws.run_dirs()
    if not run_dirs:
        return
    st.header("All runs")
    st.dataframe(runs_table(run_dirs), hide_index=True, width="stretch", column_config=RUNS_COLUMNS, placeholder=MISSING)

    names = [run_dir.name for run_dir in run_dirs]
    with_curves = [name for name in names if epoch_history(ws.runs_dir / name)]
    if len(with_curves) < 2:
        compared = []
    else:
        # The key changes with the list, so a new run resets the choice to the two newest.
        compared = st.multiselect(
            "Compare the curves of runs", with_curves, default=with_curves[:2], key=f"train_compare_{len(with_curves)}"
        )
    if compared:
        histories = {name: epoch_history(ws.runs_dir / name) for name in compared}
        st.plotly_chart(curves_figure(histories), key="compare_curves")

    with st.expander("Delete a run"):
        finished = [name for name in names if get_manager().active(ws.runs_dir / name) is None]
        name = st.selectbox("Run", finished, key="train_delete_pick")
        if name and st.button("Delete this run", key="train_delete", icon=":material/delete:"):
            with engine_errors("deleting the run"):
                ws.delete_run(name)
            st.rerun()


def runs_table(run_dirs: list[Path]) -> pd.DataFrame:
    """Return one row per run; what a run does not have (yet) is missing (NA), never a guess."""
    table = pd.DataFrame([_run_row(run_dir) for run_dir in run_dirs], columns=list(RUNS_COLUMNS))
    table["validation accuracy"] = table["validation accuracy"].astype("Float64")
    for column in ("frozen stages", "epochs"):
        table[column] = table[column].astype("Int64")
    return table


def _started_settings(run_dir: Path) -> dict:
    """Return a run's settings from the configuration it started with (no run.json yet)."""
    config = read_config(run_dir)
    settings = {key: config.get(key) for key in ("backbone", "pretrained", "epochs", "augment")}
    try:
        spec = backbones.get_spec(config["backbone"])
        settings["frozen_stages"] = backbones.resolve_freeze(spec, config["freeze"])
    except (KeyError, TlappError):
        settings["frozen_stages"] = None
    return settings


def _run_row(run_dir: Path) -> dict:
    """Return a run's row from its run.json, or from its settings at start while it has none."""
    row = {"run": run_dir.name, "status": TABLE_STATUS_LABELS.get(run_status(run_dir), "")}
    try:
        run = load_run(run_dir)
    except (TlappError, ValueError, OSError):
        run = None
    if run is not None:
        config = run.info.get("config", {})
        settings = {
            "backbone": run.info.get("backbone"),
            "pretrained": config.get("pretrained"),
            "frozen_stages": run.info.get("frozen_stages"),
            "epochs": run.metrics.get("epochs_run"),
            "augment": config.get("augment"),
        }
    else:
        settings = _started_settings(run_dir)
    backbone = settings.get("backbone")
    if backbone is not None and settings.get("pretrained") is False:
        backbone += " (scratch)"
    augmentation = None
    if settings.get("augment") is not None:
        augmentation = "yes" if settings["augment"] else "no"
    row.update(
        {
            "backbone": backbone,
            "frozen stages": settings.get("frozen_stages"),
            "epochs": settings.get("epochs"),
            "augmentation": augmentation,
            "validation accuracy": run.metrics.get("val_accuracy") if run else None,
            "training time": format_seconds(run.metrics["train_seconds"]) if run and "train_seconds" in run.metrics else None,
        }
    )
    return row


ws = workspace()
st.title("2. Train")
choice = ws.selected_dataset()
require(choice is not None, "Choose a dataset first.", DATA, "Go to 1. Data")
with st.spinner(f"Checking the dataset '{choice.name}'..."):
    try:
        collection = load_dataset(choice.path)
    except TlappError as error:
        show_error(error)
        require(False, "Fix the dataset or choose another one.", DATA, "Go to 1. Data")

st.markdown(
    f"Dataset **{choice.label}**: {len(collection.train)} training and {len(collection.val)} validation photos "
    f"in {len(collection.classes)} classes."
)
settings, explanation = st.columns([1, 1], gap="large")
with settings:
    spec = choose_backbone()
    pretrained, frozen = choose_freezing(spec, len(collection.classes))
with explanation:
    options = choose_training()
    show_augmentation_preview(spec, collection)
    with engine_errors("estimating the training time", stop=False):
        estimate = estimate_train_seconds(
            spec.name, frozen, len(collection.train) + len(collection.val), options["epochs"], options["augment"]
        )
        st.metric("Estimated training time", format_seconds(estimate), help="Estimated from the measured speed of each stage; reading the photos adds to it.")

busy = [job for job in get_manager().jobs(owner=ws.id) if job.active]
if st.button("Start training", type="primary", icon=":material/play_arrow:", disabled=bool(busy), key="train_start"):
    config = TrainConfig(backbone=spec.name, pretrained=pretrained, freeze=frozen, **options)
    start_run(ws, choice.path, config)
    st.rerun()
if busy:
    st.caption("One run at a time per workspace: wait for this one or stop it.")

st.divider()
def newest_training_run(ws: Workspace) -> Path | None:
    """Return the newest run folder that this page trained: distilled students share the runs folder."""
    for run_dir in ws.run_dirs():
        job = get_manager().latest(run_dir)
        if job is not None and job.kind != "train":
            continue
        if job is None and (run_dir / "run.json").is_file() and load_run(run_dir).info.get("model_type") == "student":
            continue
        return run_dir
    return None


followed = run_to_follow(ws.id, "train", ws.runs_dir, "train_run", lambda: newest_training_run(ws))
if followed is not None:
    st.header("Current run")
    follow_run(followed, draw_run)
show_runs(ws)
