"""Helpers every page shares: the workspace, engine error display, prerequisites, cached loads."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st
from PIL import Image

from tlapp.datasets import ImageCollection, load_collection
from tlapp.errors import TlappError
from tlapp.events import EpochEnd, Failed, Message, to_dict
from tlapp.images import ImageError, load_rgb
from tlapp.jobs import FINAL_STATUSES, INTERRUPTED, Job, get_manager, run_status
from tlapp.runs import Run, read_events
from tlapp.workspace import WORKSPACE, DatasetChoice, Workspace, dataset_fingerprint, is_valid_workspace_id, new_workspace_id

log = logging.getLogger("tlapp.app")

HOME = "pages/home.py"
DATA = "pages/data.py"
TRAIN = "pages/train.py"
EVALUATE = "pages/evaluate.py"
PREDICT = "pages/predict.py"

THUMBNAIL_SIDE = 192

# Shown under image uploaders, which take any file: the engine names each file it cannot read.
# A page following a running job redraws it this often (seconds).
REFRESH_SECONDS = 1.5
STATUS_LABELS = {
    "queued": "waiting in the queue",
    "running": "running",
    "done": "finished",
    "stopped": "stopped",
    "failed": "failed",
    INTERRUPTED: "interrupted (the server restarted)",
}
WEIGHTS_STATUS = {
    "bundled": "bundled with the app (works offline)",
    "cached": "downloaded already (works offline)",
    "download": "downloaded on first use (needs internet)",
    "missing": "missing: its weights package is not installed",
}

IMAGE_FORMATS_CAPTION = "JPEG, PNG, WebP, HEIC, TIFF, BMP, GIF and every other format Pillow reads."


def _leave_pages_directory_mode() -> None:
    """Rerun through app.py when Streamlit ran this page without it.

    A Streamlit server started beside a ``pages/`` folder runs a requested page (``/data``)
    directly, without the entry script, until some session has called ``st.navigation``. The
    page would then show a sidebar listing every file of ``pages/`` and miss app.py's layout
    and logging, so the first such page sets the flag that ``st.navigation`` would have set and
    reruns. AppTest resets the flag before every run, and a rerun there would drop the
    simulated clicks, so under AppTest the page just carries on.
    """
    # NOTE: PagesManager.uses_pages_directory and global.appTest are Streamlit internals
    # (checked in 1.67). If they change, pages still work, with the file-list sidebar.
    try:
        from streamlit import config
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if not getattr(PagesManager, "uses_pages_directory", False) or config.get_option("global.appTest"):
        return
    log.info("page opened before app.py ran; rerunning through app.py's navigation")
    PagesManager.uses_pages_directory = False
    st.rerun()


def workspace() -> Workspace:
    """Return this browser's workspace, keeping its id in the page address (``?ws=``).

    The address survives a reload; session state bridges page switches from the sidebar,
    which drop query parameters. Every page calls this first.
    """
    _leave_pages_directory_mode()
    workspace_id = st.query_params.get("ws")
    if not is_valid_workspace_id(workspace_id):
        workspace_id = st.session_state.get("ws")
    if not is_valid_workspace_id(workspace_id):
        workspace_id = new_workspace_id()
        log.info("new workspace %s", workspace_id)
    st.session_state["ws"] = workspace_id
    if st.query_params.get("ws") != workspace_id:
        st.query_params["ws"] = workspace_id
    return Workspace(workspace_id)


def link(page: str, label: str, icon: str | None = None) -> None:
    """Show a link to another page that keeps the workspace id in the address."""
    st.page_link(page, label=label, icon=icon, query_params={"ws": st.session_state.get("ws", "")})


def show_error(error: TlappError) -> None:
    """Show a user error: what is wrong, then what to do."""
    text = f"{error.message}\n\n{error.hint}" if error.hint else error.message
    st.error(text, icon=":material/error:")


@contextmanager
def engine_errors(action: str, stop: bool = True) -> Iterator[None]:
    """Show errors of the engine calls inside the block instead of a traceback.

    A TlappError is shown with its hint. Any other exception is logged with its traceback and
    shown as a short message naming ``action`` (e.g. "loading the dataset"). With ``stop`` the
    page ends there; otherwise the page continues after the block.
    """
    try:
        yield
    except TlappError as error:
        show_error(error)
        if stop:
            st.stop()
    except Exception:
        log.exception("unexpected error while %s", action)
        st.error(
            f"Something went wrong while {action}. The details are in the server log; "
            "try again, and tell the instructor if it happens again.",
            icon=":material/error:",
        )
        if stop:
            st.stop()


def require(condition: bool, message: str, page: str, label: str) -> None:
    """End the page with ``message`` and a link to ``page`` unless ``condition`` holds."""
    if condition:
        return
    st.info(message, icon=":material/info:")
    link(page, label, icon=":material/arrow_forward:")
    st.stop()


@st.cache_resource(max_entries=16, show_spinner=False)
def _load_collection_cached(path: str, fingerprint: tuple) -> ImageCollection:
    return load_collection(path)


def load_dataset(path: Path) -> ImageCollection:
    """Load a dataset with the engine, cached until a file in it changes.

    Raises DatasetError (not cached) like ``load_collection``.
    """
    return _load_collection_cached(str(path), dataset_fingerprint(path))


@st.cache_resource(max_entries=2048, show_spinner=False)
def _thumbnail_cached(path: str, modified: float, max_side: int) -> Image.Image | None:
    try:
        return load_rgb(path, max_side=max_side)
    except ImageError as error:
        log.info("no thumbnail for %s: %s", path, error.reason)
        return None


def thumbnail(path: str | Path, max_side: int = THUMBNAIL_SIDE) -> Image.Image | None:
    """Return a small RGB copy of an image file, or None when it cannot be read (any more)."""
    try:
        modified = Path(path).stat().st_mtime
    except OSError:
        return None
    return _thumbnail_cached(str(path), modified, max_side)


def epoch_history(run_dir: Path) -> list[dict]:
    """Return the EpochEnd records of a run so far, from its live job or its events.jsonl."""
    job = get_manager().latest(run_dir)
    events = job.events if job is not None else read_events(run_dir)
    return [to_dict(event) for event in events if isinstance(event, EpochEnd) and not event.series]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """Return the count with its noun: ``plural(1, "photo")`` is "1 photo", ``plural(3, "photo")`` "3 photos"."""
    return f"{count} {singular if count == 1 else plural_form or singular + 's'}"


def model_description(run: Run) -> str:
    """Describe a run's network for run lists: its backbone and frozen stages, or which student it is."""
    info = run.info
    if info.get("model_type") == "student":
        kind = "distilled student" if info.get("teacher") else "student trained on the labels alone"
        return f"{kind} {info.get('student')}"
    return f"{info.get('backbone')}, {info.get('frozen_stages')} stages frozen"


def classifier_label(run: Run) -> str:
    """Return a classification run's name with its network and validation accuracy."""
    accuracy = run.metrics.get("val_accuracy")
    suffix = f", validation accuracy {accuracy:.1%}" if accuracy is not None else ""
    return f"{run.name} ({model_description(run)}{suffix})"


def choose_run(
    runs: list[Run], key: str, *, started_key: str = "train_run", label: Callable[[Run], str] = classifier_label
) -> Run:
    """Show the run selectbox, starting on the run named in ``st.session_state[started_key]``, and return the chosen run."""
    names = [run.name for run in runs]
    preferred = st.session_state.get(started_key)
    name = st.selectbox(
        "Run",
        names,
        index=names.index(preferred) if preferred in names else 0,
        key=key,
        format_func=lambda name: label(runs[names.index(name)]),
    )
    return runs[names.index(name)]


def format_seconds(seconds: float | None) -> str:
    """Return a duration as "45 s", "3 min 20 s" or "1 h 05 min"."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def image_grid(items: list[tuple[Image.Image | None, str]], columns: int = 6) -> None:
    """Show images with captions in rows of ``columns``; a None image shows its caption only."""
    for start in range(0, len(items), columns):
        cells = st.columns(columns)
        for cell, (image, caption) in zip(cells, items[start : start + columns]):
            with cell:
                if image is None:
                    st.caption(f"(cannot show) {caption}")
                else:
                    st.image(image, caption=caption, width="stretch")


def run_to_follow(owner: str, kind: str, runs_dir: Path, session_key: str, newest: Callable[[], Path | None]) -> Path | None:
    """Return the run a page follows: the owner's active job of ``kind``, else the run named in
    ``st.session_state[session_key]`` (the one started last), else ``newest()``."""
    for job in get_manager().jobs(owner=owner):
        if job.active and job.kind == kind:
            return job.run_dir
    name = st.session_state.get(session_key)
    if name and (runs_dir / name).is_dir():
        return runs_dir / name
    return newest()


def follow_run(run_dir: Path, draw: Callable[[Path, Job | None, str], None]) -> None:
    """Draw a run with ``draw(run_dir, job, status)``; while its job is active, redraw every REFRESH_SECONDS.

    Only this part of the page reruns while the job goes. When the job ends the whole page
    reruns, because more than this part changes (the Start button, the results).
    """
    job = get_manager().latest(run_dir)
    active = job is not None and job.active

    @st.fragment(run_every=REFRESH_SECONDS if active else None)
    def live() -> None:
        status = run_status(run_dir)
        if active and status in FINAL_STATUSES:
            st.rerun(scope="app")
        draw(run_dir, job, status)

    live()


def draw_job(run_dir: Path, job: Job | None, status: str, progress: Callable[[list], None], stop_key: str, stop_help: str) -> list:
    """Draw a run's status line and, while its job is active, its queue place, progress and Stop button.

    Then show the job's warnings and its failure, if any. Returns the job's events.
    """
    events = job.events if job is not None else []
    st.markdown(f"**Run {run_dir.name}**: {STATUS_LABELS.get(status, status)}")
    if job is not None and job.active:
        position = job.queue_position
        if position:
            st.info(f"Another model is training. Yours is number {position} in the queue and starts automatically.", icon=":material/hourglass_top:")
        progress(events)
        if st.button("Stop", key=stop_key, icon=":material/stop_circle:", help=stop_help):
            job.stop()
            st.toast("Stopping after the current batch...")

    for event in events:
        if isinstance(event, Message) and event.level == "warning":
            st.warning(event.text, icon=":material/warning:")
    failed = next((event for event in reversed(events) if isinstance(event, Failed)), None)
    if failed is not None:
        show_error(TlappError(failed.message, failed.hint))
    return events


def dataset_chooser(store, key: str, label: str, on_delete: Callable[[str], None]) -> DatasetChoice | None:
    """Show the dataset selectbox and, for the user's own dataset, a Delete button; return the chosen dataset.

    ``store`` is a Workspace or a SegmentationStore: both list, remember and delete datasets.
    ``on_delete(name)`` runs after a deletion, before the page reruns (to queue a notice).
    """
    choices = store.choices()
    if not choices:
        return None
    labels = [choice.label for choice in choices]
    current = store.selected_dataset()
    # The stored choice wins over the widget's memory: uploads and the library change it too.
    st.session_state[key] = current.label if current else None

    def remember() -> None:
        chosen = st.session_state[key]
        if chosen in labels:
            store.select_dataset(choices[labels.index(chosen)])

    columns = st.columns([4, 1], vertical_alignment="bottom")
    columns[0].selectbox(label, labels, key=key, on_change=remember, placeholder="Choose a dataset")
    if current is not None and current.source == WORKSPACE:
        if columns[1].button("Delete", key=f"{key}_delete", icon=":material/delete:", help="Delete this dataset from your workspace"):
            with engine_errors("deleting the dataset"):
                store.delete_dataset(current.name)
            on_delete(current.name)
            st.rerun()
    return current


def library_picker(store, library: list[DatasetChoice], key: str, description: str, on_use: Callable[[str], None]) -> None:
    """Show the instructor's library datasets with a button that makes the picked one the chosen dataset.

    ``store`` is a Workspace or a SegmentationStore. ``on_use(name)`` runs after the choice,
    before the page reruns (to queue a notice).
    """
    if not library:
        st.info(
            "The instructor has not set up a dataset library on this server "
            "(a folder named by the TLAPP_DATASETS environment variable).",
            icon=":material/info:",
        )
        return
    st.markdown(description)
    names = [choice.name for choice in library]
    name = st.selectbox("Library dataset", names, key=f"{key}_pick")
    if st.button("Use this dataset", key=f"{key}_use", icon=":material/check:"):
        choice = library[names.index(name)]
        store.select_dataset(choice)
        on_use(choice.name)
        st.rerun()
