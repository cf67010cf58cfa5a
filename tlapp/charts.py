"""Plotly figures of engine data: class sizes, training curves, stages, confusion matrix, predictions.

Pure functions from plain data (dicts and lists as the engine writes them) to figures, so pages
only place them and tests can check them without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

FROZEN_COLOR = "#9aa5b1"  # grey: stages that keep their ImageNet weights
TRAINABLE_COLOR = "#e8710a"  # orange: stages and head that training changes
RUN_COLORS = qualitative.Plotly


def _compact(figure: go.Figure, height: int) -> go.Figure:
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return figure


def class_counts_figure(counts: Mapping[str, int]) -> go.Figure:
    """Build a bar chart of images per class, in the given class order."""
    labels = list(counts)
    figure = go.Figure(go.Bar(x=labels, y=[counts[label] for label in labels], text=list(counts.values())))
    figure.update_traces(textposition="outside", cliponaxis=False, marker_color=RUN_COLORS[0])
    figure.update_layout(title="Images per class", xaxis_title="class", yaxis_title="images")
    return _compact(figure, 320)


def curves_figure(histories: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """Build loss and accuracy curves per epoch for one or more runs, training dashed and validation solid.

    ``histories`` maps a run name to its list of epoch records (``EpochEnd`` dicts with
    ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``, ``val_accuracy``).
    """
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss (lower is better)", "Accuracy (higher is better)"))
    single = len(histories) == 1
    for index, (name, history) in enumerate(histories.items()):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        epochs = [record["epoch"] for record in history]
        for column, metric in ((1, "loss"), (2, "accuracy")):
            for split, dash in (("train", "dash"), ("val", "solid")):
                split_name = "training" if split == "train" else "validation"
                figure.add_trace(
                    go.Scatter(
                        x=epochs,
                        y=[record[f"{split}_{metric}"] for record in history],
                        mode="lines+markers",
                        name=split_name if single else f"{name} ({split_name})",
                        legendgroup=f"{name}-{split}",
                        showlegend=column == 1,
                        line={"color": color, "dash": dash},
                    ),
                    row=1,
                    col=column,
                )
    figure.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_layout(legend={"orientation": "h", "y": -0.25})
    return _compact(figure, 360)


def _max_epoch(histories: Mapping[str, Sequence[Mapping]]) -> int:
    return max((record["epoch"] for history in histories.values() for record in history), default=0)


def stages_figure(
    stage_names: Sequence[str], stage_params: Sequence[int], frozen: int, head_params: int
) -> go.Figure:
    """Build a bar per stage (input at the top) sized by parameters: grey when frozen, orange when trained."""
    names = [*stage_names, "new head"]
    params = [*stage_params, head_params]
    colors = [FROZEN_COLOR if index < frozen else TRAINABLE_COLOR for index in range(len(stage_names))]
    colors.append(TRAINABLE_COLOR)
    states = ["kept from ImageNet" if color == FROZEN_COLOR else "trained on your photos" for color in colors]
    figure = go.Figure(
        go.Bar(
            y=names,
            x=params,
            orientation="h",
            marker_color=colors,
            customdata=states,
            hovertemplate="%{y}: %{x:,} parameters, %{customdata}<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(title_text="parameters", type="log")
    figure.update_layout(title="Stages, from the input (top) to the new head (bottom)")
    return _compact(figure, 120 + 22 * len(names))


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """Build a heatmap of counts, rows = true class and columns = predicted class.

    The colour is the share of each true class (row), so small classes stay visible; the text is
    the count. Streamlit 1.67 reports no selection when a heatmap cell is clicked, so an
    invisible marker sits on every cell: clicking a cell selects its marker, whose x and y are
    the predicted and true class.
    """
    shares = []
    for row in confusion:
        total = sum(row)
        shares.append([count / total if total else 0.0 for count in row])
    labels = list(classes)
    figure = go.Figure(
        go.Heatmap(
            z=shares,
            x=labels,
            y=labels,
            text=[[str(count) for count in row] for row in confusion],
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar={"title": "share of row", "tickformat": ".0%"},
            hoverinfo="skip",
        )
    )
    cells = [(true, predicted) for true in range(len(labels)) for predicted in range(len(labels))]
    figure.add_trace(
        go.Scatter(
            x=[labels[predicted] for _, predicted in cells],
            y=[labels[true] for true, _ in cells],
            customdata=[confusion[true][predicted] for true, predicted in cells],
            mode="markers",
            marker={"size": 30, "opacity": 0},
            showlegend=False,
            name="cells",
            hovertemplate="true %{y}, predicted %{x}: %{customdata} images<extra></extra>",
        )
    )
    figure.update_xaxes(title_text="predicted class", type="category", side="bottom")
    figure.update_yaxes(title_text="true class", type="category", autorange="reversed")
    # Hover (and so a click) goes to the nearest cell centre, wherever the pointer is in the cell.
    figure.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select")
    size = 180 + 40 * len(classes)
    return _compact(figure, min(size, 900))


def top_classes_figure(predictions: Sequence[tuple[str, float]]) -> go.Figure:
    """Build horizontal bars of the most likely classes for one image, the most likely at the top."""
    labels = [label for label, _ in predictions]
    probabilities = [probability for _, probability in predictions]
    figure = go.Figure(
        go.Bar(
            y=labels,
            x=probabilities,
            orientation="h",
            text=[f"{p:.1%}" for p in probabilities],
            textposition="auto",
            marker_color=[TRAINABLE_COLOR] + [FROZEN_COLOR] * (len(labels) - 1),
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(range=[0, 1], tickformat=".0%", title_text="probability")
    return _compact(figure, 90 + 30 * len(labels))
