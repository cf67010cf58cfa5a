"""Plotly figures of engine data: class sizes, training curves, stages, confusion matrix, predictions,
segmentation masks and scores, and the distillation comparison.

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


# --- segmentation -----------------------------------------------------------------------------


def _rgb(colour: Sequence[int]) -> str:
    return f"rgb({int(colour[0])}, {int(colour[1])}, {int(colour[2])})"


def class_pixels_figure(pixels: Mapping[str, int], colours: Sequence[Sequence[int]]) -> go.Figure:
    """Build horizontal bars of each class's share of the mask pixels, each bar in its class's display colour.

    ``pixels`` maps class names, in class order, to pixel counts; ``colours[i]`` is the RGB
    colour of class i (classes without one are drawn grey).
    """
    labels = list(pixels)
    total = sum(pixels.values()) or 1
    shares = [pixels[label] / total for label in labels]
    bar_colours = [_rgb(colours[index]) if index < len(colours) else FROZEN_COLOR for index in range(len(labels))]
    figure = go.Figure(
        go.Bar(
            y=labels,
            x=shares,
            orientation="h",
            text=[f"{share:.1%}" for share in shares],
            textposition="outside",
            cliponaxis=False,
            marker={"color": bar_colours, "line": {"color": "#444444", "width": 1}},
            customdata=[pixels[label] for label in labels],
            hovertemplate="%{y}: %{customdata:,} pixels (%{x:.1%})<extra></extra>",
        )
    )
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(range=[0, 1.15], tickformat=".0%", title_text="share of all mask pixels")
    figure.update_layout(title="Pixels per class, in the colour used for the class")
    return _compact(figure, 110 + 30 * len(labels))


def segmentation_curves_figure(histories: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """Build loss and IoU curves per epoch for one or more segmentation runs, training dashed and validation solid.

    Records are ``EpochEnd`` dicts whose ``extra`` contains ``train_iou`` and ``val_iou`` (the mean
    IoU of the object classes); an epoch without a score (no object pixels anywhere) leaves a gap.
    """
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss (lower is better)", "IoU of the objects (higher is better)"))
    single = len(histories) == 1
    for index, (name, history) in enumerate(histories.items()):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        epochs = [record["epoch"] for record in history]
        series = {
            (1, "train"): [record["train_loss"] for record in history],
            (1, "val"): [record["val_loss"] for record in history],
            (2, "train"): [record.get("extra", {}).get("train_iou") for record in history],
            (2, "val"): [record.get("extra", {}).get("val_iou") for record in history],
        }
        for (column, split), values in series.items():
            split_name = "training" if split == "train" else "validation"
            figure.add_trace(
                go.Scatter(
                    x=epochs,
                    y=values,
                    mode="lines+markers",
                    name=split_name if single else f"{name} ({split_name})",
                    legendgroup=f"{name}-{split}",
                    showlegend=column == 1,
                    line={"color": color, "dash": "dash" if split == "train" else "solid"},
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_layout(legend={"orientation": "h", "y": -0.25})
    return _compact(figure, 360)


IOU_BINS = 20


def iou_histogram_figure(ious: Sequence[float]) -> go.Figure:
    """Build a histogram of per-image IoU in 20 bins of 5 %, so a few failed images stand out.

    An IoU of exactly 1.0 counts in the last bin.
    """
    counts = [0] * IOU_BINS
    for iou in ious:
        counts[min(int(iou * IOU_BINS), IOU_BINS - 1)] += 1
    width = 1 / IOU_BINS
    figure = go.Figure(
        go.Bar(
            x=[(index + 0.5) * width for index in range(IOU_BINS)],
            y=counts,
            width=width * 0.95,
            marker_color=RUN_COLORS[0],
            customdata=[[index * width, (index + 1) * width] for index in range(IOU_BINS)],
            hovertemplate="IoU %{customdata[0]:.0%} to %{customdata[1]:.0%}: %{y} images<extra></extra>",
        )
    )
    figure.update_xaxes(range=[0, 1], tickformat=".0%", title_text="IoU of the image")
    # Whole-number ticks: a count of images has no halves.
    figure.update_yaxes(title_text="validation images", rangemode="tozero", dtick=1 if max(counts, default=0) <= 10 else None)
    figure.update_layout(title="IoU of each validation image")
    return _compact(figure, 260)


# --- distillation -----------------------------------------------------------------------------

STUDENT_SERIES_COLORS = {"distilled": RUN_COLORS[1], "labels only": RUN_COLORS[0]}


def distillation_curves_figure(histories: Mapping[str, Sequence[Mapping]]) -> go.Figure:
    """Build per-epoch curves of the students of one distillation run, one colour per series.

    ``histories`` maps a series ("distilled", "labels only") to its ``EpochEnd`` dicts. Panels:
    validation loss (cross-entropy on the labels, the same for both series), accuracy (training
    dashed, validation solid) and agreement with the teacher (``extra["agreement"]``). The
    training loss is not drawn, because the distilled student's includes the teacher term.
    """
    figure = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("Validation loss (lower is better)", "Accuracy (higher is better)", "Agreement with the teacher"),
    )
    for index, (series, history) in enumerate(histories.items()):
        color = STUDENT_SERIES_COLORS.get(series, RUN_COLORS[(index + 2) % len(RUN_COLORS)])
        epochs = [record["epoch"] for record in history]
        traces = [
            (1, "validation", [record["val_loss"] for record in history], "solid"),
            (2, "training", [record["train_accuracy"] for record in history], "dash"),
            (2, "validation", [record["val_accuracy"] for record in history], "solid"),
            (3, "validation", [record.get("extra", {}).get("agreement") for record in history], "solid"),
        ]
        for column, split, values, dash in traces:
            figure.add_trace(
                go.Scatter(
                    x=epochs,
                    y=values,
                    mode="lines+markers",
                    name=f"{series} ({split})",
                    legendgroup=f"{series}-{split}",
                    showlegend=column == 2,
                    line={"color": color, "dash": dash},
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(title_text="epoch", dtick=1 if _max_epoch(histories) <= 20 else None)
    figure.update_yaxes(rangemode="tozero", row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    figure.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=3)
    figure.update_layout(legend={"orientation": "h", "y": -0.25})
    return _compact(figure, 360)


def accuracy_latency_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Build a scatter of validation accuracy against CPU time per image, one trace per model.

    ``rows`` are comparison rows with ``label``, ``role``, ``val_accuracy``, ``latency_ms_batch1``
    and ``latency_ms_batch32``. Each model gets a filled circle at batch size 1 and an open
    diamond at batch size 32, joined by a dotted line; a latency of None (not measured) leaves
    its point out.
    """
    figure = go.Figure()
    for row in rows:
        points = [
            (row.get(f"latency_ms_batch{batch_size}"), batch_size, symbol)
            for batch_size, symbol in ((1, "circle"), (32, "diamond-open"))
        ]
        points = [point for point in points if point[0] is not None]
        figure.add_trace(
            go.Scatter(
                x=[latency for latency, _, _ in points],
                y=[row["val_accuracy"]] * len(points),
                mode="lines+markers",
                name=row["label"],
                line={"color": _role_color(row), "dash": "dot", "width": 1},
                marker={"size": 14, "symbol": [symbol for _, _, symbol in points], "color": _role_color(row)},
                customdata=[batch_size for _, batch_size, _ in points],
                hovertemplate=row["label"] + ": %{y:.1%} at %{x:.1f} ms per image in batches of %{customdata}<extra></extra>",
            )
        )
    figure.update_xaxes(title_text="CPU time per image (ms; circle: batch of 1, diamond: batch of 32)", rangemode="tozero")
    figure.update_yaxes(title_text="validation accuracy", range=[0, 1.05], tickformat=".0%")
    figure.update_layout(title="Accuracy against speed", legend={"orientation": "h", "y": -0.3})
    return _compact(figure, 380)


def model_size_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Build bars of each model's saved size in MB, labelled with its parameter count."""
    labels = [row["label"] for row in rows]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=[row["size_mb"] for row in rows],
            text=[f"{row['size_mb']:.1f} MB, {row['params'] / 1e6:.2f} M parameters" for row in rows],
            textposition="outside",
            cliponaxis=False,
            marker_color=[_role_color(row) for row in rows],
        )
    )
    figure.update_yaxes(title_text="size of model.pt (MB)", rangemode="tozero")
    figure.update_layout(title="Model size")
    return _compact(figure, 380)


def _role_color(row: Mapping) -> str:
    """Return the colour of a comparison row: grey for the teacher, the series colour for a student."""
    role = row.get("role")
    if role == "teacher":
        return FROZEN_COLOR
    if role == "student_without_teacher":
        return STUDENT_SERIES_COLORS["labels only"]
    return STUDENT_SERIES_COLORS["distilled"]


def temperature_figure(classes: Sequence[str], temperatures: Sequence[float], probabilities: Sequence[Sequence[float]]) -> go.Figure:
    """Build grouped bars of one image's class probabilities at each temperature (one bar colour per T).

    ``probabilities[t][c]`` is the probability of ``classes[c]`` at ``temperatures[t]``.
    """
    figure = go.Figure()
    palette = qualitative.Plotly
    for index, (temperature, row) in enumerate(zip(temperatures, probabilities)):
        figure.add_trace(
            go.Bar(
                x=list(classes),
                y=list(row),
                name=f"T = {temperature:g}",
                marker_color=palette[index % len(palette)],
                hovertemplate="%{x} at T = " + f"{temperature:g}" + ": %{y:.1%}<extra></extra>",
            )
        )
    figure.update_xaxes(title_text="class", type="category")
    figure.update_yaxes(title_text="probability", range=[0, 1.02], tickformat=".0%")
    figure.update_layout(barmode="group", title="Teacher's probabilities at each temperature T", legend={"orientation": "h", "y": -0.3})
    return _compact(figure, 380)
