"""Evaluate: metrics of a run on its validation photos, the confusion matrix and the mistakes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages._common import PREDICT, TRAIN, choose_run, engine_errors, image_grid, link, require, thumbnail, workspace
from tlapp.charts import confusion_figure, curves_figure
from tlapp.evaluation import cell_samples, misclassified
from tlapp.runs import Run, list_runs

MAX_GALLERY = 24


def show_metrics(run: Run) -> None:
    evaluation = run.evaluation
    columns = st.columns(4)
    columns[0].metric("Accuracy", f"{evaluation['accuracy']:.1%}", help="Share of validation photos classified correctly.")
    columns[1].metric(
        "Balanced accuracy",
        f"{evaluation['balanced_accuracy']:.1%}",
        help="Mean of the per-class recalls: every class counts the same, however many photos it has.",
    )
    columns[2].metric("Validation photos", len(evaluation["samples"]))
    columns[3].metric("Best epoch", run.metrics.get("best_epoch", "?"))
    rows = [
        {"class": label, **scores}
        for label, scores in evaluation["per_class"].items()
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "precision": st.column_config.NumberColumn(format="%.2f", help="Of the photos predicted as this class, the share that really are."),
            "recall": st.column_config.NumberColumn(format="%.2f", help="Of the photos of this class, the share found."),
            "f1": st.column_config.NumberColumn("F1", format="%.2f", help="Harmonic mean of precision and recall."),
            "support": st.column_config.NumberColumn(help="Validation photos of this class."),
        },
    )


def show_confusion(run: Run) -> None:
    evaluation = run.evaluation
    classes = evaluation.get("classes") or run.classes
    st.subheader("Confusion matrix")
    st.caption(
        "Each row is a true class, each column what the model predicted: the diagonal holds the correct "
        "predictions, everything else is a mistake. Click a cell, or choose it below, to see its photos."
    )
    event = st.plotly_chart(
        confusion_figure(evaluation["confusion"], classes),
        key=f"confusion_{run.name}",
        on_select="rerun",
        selection_mode="points",
    )
    _default_cell(evaluation["confusion"], classes, run.name)
    _apply_clicked_cell(event, classes, run.name)

    columns = st.columns(2)
    true_label = columns[0].selectbox("True class", classes, key=f"cell_true_{run.name}")
    predicted_label = columns[1].selectbox("Predicted class", classes, key=f"cell_predicted_{run.name}")
    true, predicted = classes.index(true_label), classes.index(predicted_label)
    samples = cell_samples(evaluation, true, predicted)
    verdict = "correct" if true == predicted else "mistakes"
    photos = "photo" if len(samples) == 1 else "photos"
    st.markdown(f"**{len(samples)} {photos} of {true_label} predicted as {predicted_label}** ({verdict})")
    show_gallery(samples, classes)


def _apply_clicked_cell(event, classes: list[str], run_name: str) -> None:
    """Copy a newly clicked heatmap cell into the two selectboxes (before they are drawn)."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        points = []
    if not points:
        return
    cell = (points[0].get("y"), points[0].get("x"))
    if cell == st.session_state.get(f"cell_clicked_{run_name}") or cell[0] not in classes or cell[1] not in classes:
        return
    st.session_state[f"cell_clicked_{run_name}"] = cell
    st.session_state[f"cell_true_{run_name}"] = cell[0]
    st.session_state[f"cell_predicted_{run_name}"] = cell[1]


def _default_cell(confusion: list[list[int]], classes: list[str], run_name: str) -> None:
    """Start on the most frequent mistake, or on the first class when there is none."""
    if f"cell_true_{run_name}" in st.session_state:
        return
    mistakes = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count]
    _, true, predicted = max(mistakes) if mistakes else (0, 0, 0)
    st.session_state[f"cell_true_{run_name}"] = classes[true]
    st.session_state[f"cell_predicted_{run_name}"] = classes[predicted]


def show_gallery(samples: list[dict], classes: list[str]) -> None:
    if not samples:
        st.caption("No photos here.")
        return
    shown = samples[:MAX_GALLERY]
    items = []
    for sample in shown:
        probabilities = sample["probabilities"]
        caption = (
            f"{sample['relpath']}: {classes[sample['predicted']]} {probabilities[sample['predicted']]:.0%}"
            + ("" if sample["true"] == sample["predicted"] else f", {classes[sample['true']]} {probabilities[sample['true']]:.0%}")
        )
        items.append((thumbnail(sample["file"]), caption))
    image_grid(items)
    if len(samples) > len(shown):
        st.caption(f"Showing the {len(shown)} with the highest loss of {len(samples)}.")


def show_mistakes(run: Run) -> None:
    evaluation = run.evaluation
    classes = evaluation.get("classes") or run.classes
    wrong = misclassified(evaluation)
    st.subheader(f"Misclassified photos ({len(wrong)})")
    if not wrong:
        st.success("Every validation photo is classified correctly.", icon=":material/check_circle:")
        return
    st.caption(
        "Most confident mistakes first (highest loss). Captions: file, predicted class and its probability, then "
        "the true class and its probability. Look for wrong labels, unusual photos or classes that look alike."
    )
    show_gallery(wrong, classes)


ws = workspace()
st.title("3. Evaluate")
st.markdown("How well does a run classify the validation photos, which it never trained on?")
with engine_errors("reading the runs"):
    runs = [run for run in list_runs(ws.runs_dir) if run.task == "classification" and run.evaluation]
require(bool(runs), "No finished run yet: train a model first.", TRAIN, "Go to 2. Train")
run = choose_run(runs, "evaluate_run")
show_metrics(run)
show_confusion(run)
show_mistakes(run)
with st.expander("Training curves of this run"):
    st.plotly_chart(curves_figure({run.name: run.history}), key="evaluate_curves")
link(PREDICT, "Next: classify new photos", icon=":material/arrow_forward:")
