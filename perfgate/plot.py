"""Pareto plots: each model's metric against p50 latency, one figure per model, as PNG and SVG.

A figure has one panel per batch size: a call at batch 32 and one at batch 1 do different work, so
their latencies never share an axis. The metric's axis keeps its natural orientation (larger
values up) and says which way is better; for a lower-is-better metric (MSE) the frontier hangs
from the top, the better cases below it. Where cases measured their energy, a second figure puts
the metric against the energy of one inference, frontier and panels alike.

matplotlib is imported only here and only when a plot is drawn (the ``report`` extra), with the
non-interactive Agg backend so that a CI runner without a display can draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from perfgate.pareto import Score, model_score, pareto_front
from perfgate.results import UNFINISHED, CaseResult, ResultsDocument
from perfgate.units import human_bytes

LOG_SPREAD = 8.0  # a log latency axis once the slowest case is this many times the fastest
OFFSET_RADII = (5.0, 11.0, 18.0, 27.0, 38.0, 52.0, 68.0, 86.0, 110.0)  # label distances tried, in points
LABEL_PAD_PX = 3.0  # clear space kept around a label, so that neighbours never read as one
LEADER_FROM = 14.0  # a label this far from its point gets a leader line back to it
# Label directions in degrees, most wanted first: straight up or down keeps leader lines short and
# parallel, which matters because many variants tie on accuracy and sit on one horizontal row.
ANGLES = (90, 270, 60, 120, 240, 300, 30, 150, 210, 330, 0, 180)
MARKERS = ("o", "s", "^", "D", "v", "P")  # one per runner in a merged plot
MIN_AREA, MAX_AREA, DEFAULT_AREA = 30.0, 420.0, 60.0  # marker areas in pt^2
MAX_COLUMNS = 3  # panels per row of a figure


@dataclass(frozen=True)
class XAxis:
    """What a figure's horizontal axis holds: p50 latency, or energy per inference.

    :param title: how the title names it (``<metric> vs <title>``).
    :param label: the axis label, with its unit.
    :param better: the word after the arrow to the better (left) side.
    :param file_suffix: added to the file name (``pareto-<model><suffix>.png``).
    """

    title: str
    label: str
    better: str
    file_suffix: str

    def value(self, result: CaseResult) -> float | None:
        raise NotImplementedError


class _Latency(XAxis):
    def value(self, result: CaseResult) -> float | None:
        return result.latency.p50_ms if result.latency else None


class _Energy(XAxis):
    def value(self, result: CaseResult) -> float | None:
        """Millijoules per inference, only where the case really measured it (a dict, read defensively:
        results written before energy was measured have none)."""
        energy = getattr(result, "energy", None)
        if not isinstance(energy, dict) or not energy.get("measured"):
            return None
        joules = energy.get("joules_per_inference")
        return float(joules) * 1e3 if isinstance(joules, int | float) and joules > 0 else None


LATENCY = _Latency("p50 latency", "p50 latency per call (ms)", "faster", "")
ENERGY = _Energy("energy per inference", "energy per inference (mJ)", "less energy", "-energy")


@dataclass(frozen=True)
class PlotPoint:
    """One case on the plot; ``x`` is its p50 latency or its energy, as the figure's axis says."""

    label: str
    x: float
    accuracy: float
    size_bytes: int | None
    backend: str
    runner: str
    passed: bool
    frontier: bool = False


def plot_points(
    cases: Sequence[CaseResult],
    runner: str,
    with_batch: bool,
    score: Score | None = None,
    axis: XAxis = LATENCY,
) -> list[PlotPoint]:
    """The cases of one model on one runner that have a value on ``axis`` and a score, each marked
    on or off its frontier (score against ``axis``, the score's direction respected).

    :param with_batch: add the batch size to labels.
    :param score: what ``accuracy`` holds and which way is better; ``model_score(cases)`` if not given.
    """
    score = score or model_score(cases)
    usable = [
        (r, x, value)
        for r in cases
        if r.status not in UNFINISHED
        and (x := axis.value(r)) is not None
        and (value := score.value(r)) is not None
    ]
    front = pareto_front([(x, value) for _, x, value in usable], higher_is_better=score.higher_is_better)
    return [
        PlotPoint(
            label=r.technique + (f" b{r.batch_size}" if with_batch else ""),  # the colour says the backend
            x=x,
            accuracy=value,
            size_bytes=r.artifact_bytes,
            backend=r.backend,
            runner=runner,
            passed=r.status == "passed" and not any(v.failed for v in r.verdicts),
            frontier=on_front,
        )
        for (r, x, value), on_front in zip(usable, front, strict=True)
    ]


def frontier_steps(points: Sequence[PlotPoint]) -> tuple[list[float], list[float]]:
    """The frontier as a staircase: from each frontier point, its score holds until the next is reached."""
    front = sorted((p.x, p.accuracy) for p in points if p.frontier)
    return [x for x, _ in front], [y for _, y in front]


def wants_log_x(values: Sequence[float]) -> bool:
    """A log axis when the cases span enough that a linear one would squash the fast ones together."""
    positive = [x for x in values if x > 0]
    return bool(positive) and max(positive) / min(positive) >= LOG_SPREAD


def marker_area(size_bytes: int | None, largest: int) -> float:
    """Marker area in pt^2, proportional to the artifact's size on disk."""
    if not size_bytes or largest <= 0:
        return DEFAULT_AREA
    return MIN_AREA + (MAX_AREA - MIN_AREA) * size_bytes / largest


def _overlap(a: Any, b: Any) -> float:
    """Overlapping area of two display-space bounding boxes."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _candidates() -> Iterator[tuple[float, float, str, str]]:
    """Label offsets (points) with the alignment that keeps the text on that side of the point."""
    for radius in OFFSET_RADII:
        for angle in ANGLES:
            dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
            va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
            yield dx * radius, dy * radius, ha, va


def place_labels(ax: Any, points: Sequence[PlotPoint], areas: Sequence[float]) -> tuple[list[Any], bool]:
    """Label every point where it overlaps no other label, marker or the axes' edge.

    Greedy: each label tries offsets of growing radius in twelve directions, vertical first, and
    keeps the first that collides with nothing placed so far (else the least-overlapping one).
    Far labels get a leader line so that they still point at their case.

    :returns: the labels, and whether every one found a spot free of collisions.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    px_per_pt = fig.dpi / 72.0
    obstacles = []
    for point, area in zip(points, areas, strict=True):
        x, y = ax.transData.transform((point.x, point.accuracy))
        r = math.sqrt(area) / 2 * px_per_pt
        obstacles.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    labels, clean = [], True
    # Frontier points first: their labels matter most and get the closest spots.
    for index in sorted(range(len(points)), key=lambda i: (not points[i].frontier, points[i].x)):
        text, cost = _place_one(ax, points[index], obstacles, frame, renderer, areas[index])
        labels.append(text)
        clean = clean and cost == 0
    return labels, clean


def label_numbers(points: Sequence[PlotPoint]) -> dict[str, int]:
    """One number per distinct label, in order of the points' ``x`` (fastest first)."""
    numbers: dict[str, int] = {}
    for point in sorted(points, key=lambda p: p.x):
        numbers.setdefault(point.label, len(numbers) + 1)
    return numbers


def numbered(points: Sequence[PlotPoint]) -> tuple[list[PlotPoint], list[str]]:
    """Points labelled by number, one number per distinct label in latency order, and the key.

    The fallback for a crowded plot (many variants tied on accuracy, or several runners): a
    number fits where a name does not, and one configuration keeps its number on every runner
    and in every panel.
    """
    numbers = label_numbers(points)
    key = [f"{n:>2}  {label}" for label, n in numbers.items()]
    return [replace(p, label=str(numbers[p.label])) for p in points], key


def _draw_key(ax: Any, key: Sequence[str]) -> None:
    """The number -> case key of a numbered plot, under the legend on the right."""
    legend = ax.get_legend()
    box = legend.get_window_extent(ax.figure.canvas.get_renderer())
    x, y = ax.transAxes.inverted().transform((box.x0, box.y0))
    ax.text(
        x,
        y - 0.02,
        "\n".join(key),
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=7,
        family="monospace",
    )


def _label(ax: Any, point: PlotPoint, offset: tuple[float, float], ha: str, va: str, leader: bool) -> Any:
    """One label at ``offset`` points from its case, with a thin leader line back to it if asked."""
    arrow = {"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1, "shrinkB": 3} if leader else None
    return ax.annotate(
        point.label,
        (point.x, point.accuracy),
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=7,
        color="0.15",
        arrowprops=arrow,
    )


def _place_one(
    ax: Any, point: PlotPoint, obstacles: list[Any], frame: Any, renderer: Any, area: float
) -> tuple[Any, float]:
    """Place one label at the first candidate that collides with nothing; returns it and its overlap.

    :param obstacles: display-space boxes of the markers and of the labels placed so far.
    :param frame: the axes' box; a label reaching outside it costs as much as an overlap.
    """
    best: tuple[float, Any] | None = None
    clearance = math.sqrt(area) / 2  # start outside the marker, in points
    for dx, dy, ha, va in _candidates():
        offset = (
            dx + math.copysign(clearance, dx) * (abs(dx) > 0.1),
            dy + math.copysign(clearance, dy) * (abs(dy) > 0.1),
        )
        text = _label(ax, point, offset, ha, va, leader=False)
        box = text.get_window_extent(renderer).padded(LABEL_PAD_PX)
        cost = sum(_overlap(box, other) for other in obstacles)
        cost += box.width * box.height - _overlap(box, frame)
        if best is None or cost < best[0]:
            if best is not None:
                best[1].remove()
            best = (cost, text)
        else:
            text.remove()
        if cost == 0:
            break
    assert best is not None
    text = best[1]
    if math.hypot(*text.xyann) > LEADER_FROM + clearance:
        text.remove()
        text = _label(ax, point, text.xyann, text.get_ha(), text.get_va(), leader=True)
    obstacles.append(text.get_window_extent(renderer).padded(LABEL_PAD_PX))
    return text, best[0]


def axis_label(score: Score) -> str:
    """The score axis's label: the metric, and an arrow to the better side with the direction named.

    The label is drawn turned a quarter anticlockwise, reading upwards, so ``→`` points up the axis
    and ``←`` down it: ``mse  ←  lower is better`` shows an arrow pointing down.
    """
    if not score.task_metric:
        what = "top-1 agreement with the FP32 reference (fraction)"
    elif score.name == "top1":
        what = "top1 accuracy (fraction of the eval set)"
    else:
        what = score.name
    arrow = "→" if score.higher_is_better else "←"
    return f"{what}  {arrow}  {score.direction} is better"


def plot_title(model: str, score: Score, runners: Sequence[str], axis: XAxis = LATENCY) -> str:
    """``<model>: <metric> vs p50 latency  —  runner <names>``."""
    plural = "s" if len(runners) > 1 else ""
    return f"{model}: {score.header} vs {axis.title}  —  runner{plural} {', '.join(runners)}"


Panels = dict[int, dict[str, list[PlotPoint]]]  # batch size -> runner -> its points


def panel_points(runners: dict[str, list[CaseResult]], score: Score, axis: XAxis) -> Panels:
    """The plottable points of each batch size, per runner; a batch size with none has no panel.

    Each batch size has its own frontier: a batch-32 call and a batch-1 call do different work.
    """
    batches = sorted({r.batch_size for cases in runners.values() for r in cases})
    panels: Panels = {}
    for batch in batches:
        by_runner = {
            name: plot_points([r for r in cases if r.batch_size == batch], name, False, score, axis)
            for name, cases in runners.items()
        }
        if any(by_runner.values()):
            panels[batch] = by_runner
    return panels


def _figure(count: int) -> tuple[Any, list[Any]]:
    """A figure with ``count`` panels, at most three a row, sharing the score axis, with room on
    the right for the legend."""
    import matplotlib.pyplot as plt

    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    if count == 1:
        fig, ax = plt.subplots(figsize=(10, 6.2), dpi=130)
        fig.subplots_adjust(left=0.09, right=0.74, top=0.88, bottom=0.11)
        return fig, [ax]
    width, height = 5.2 * columns + 3.2, 4.9 * rows + 1.0
    fig, grid = plt.subplots(rows, columns, figsize=(width, height), dpi=130, sharey=True, squeeze=False)
    fig.subplots_adjust(
        left=0.9 / width,
        right=1 - 3.2 / width,
        top=1 - 0.9 / height,
        bottom=0.7 / height,
        wspace=0.12,
        hspace=0.35,
    )
    axes = [ax for row in grid for ax in row]
    for extra in axes[count:]:
        fig.delaxes(extra)
    return fig, axes[:count]


def draw_model(
    model: str, runners: dict[str, list[CaseResult]], colours: dict[str, Any], axis: XAxis = LATENCY
) -> Any | None:
    """The Pareto figure of one model across its runners, one panel per batch size, or ``None`` if
    no case is plottable.

    :param runners: runner -> that runner's cases of the model.
    :param colours: backend -> colour, shared by every figure of the report.
    :param axis: what the horizontal axis holds: :data:`LATENCY` or :data:`ENERGY`.
    """
    import matplotlib

    matplotlib.use("Agg")

    score = model_score([r for cases in runners.values() for r in cases])  # one axis for every runner
    panels = panel_points(runners, score, axis)
    points = [p for by_runner in panels.values() for pts in by_runner.values() for p in pts]
    if not points:
        return None
    largest = max((p.size_bytes or 0) for p in points)
    fig, axes = _figure(len(panels))
    areas = {
        batch: _scatter(ax, panels[batch], colours, largest) for ax, batch in zip(axes, panels, strict=True)
    }
    spread = (max(p.accuracy for p in points) - min(p.accuracy for p in points)) or 0.01
    for ax, (batch, by_runner) in zip(axes, panels.items(), strict=True):
        _frame(ax, [p for pts in by_runner.values() for p in pts], axis, batch)
        ax.set_ylim(
            min(p.accuracy for p in points) - spread * 0.4, max(p.accuracy for p in points) + spread * 0.4
        )
    for ax, by_runner in zip(axes, panels.values(), strict=True):
        for index, (name, pts) in enumerate(by_runner.items()):
            style = ("-", "--", ":", "-.")[index % 4]
            _draw_frontier(ax, pts, name if len(by_runner) > 1 else None, style, score.higher_is_better)
    axes[0].set_ylabel(axis_label(score))
    fig.suptitle(plot_title(model, score, list(runners), axis), fontsize=11)
    legend_ax = axes[min(len(axes), MAX_COLUMNS) - 1]  # the top row's last panel
    _legends(legend_ax, panels, colours, largest)
    fig.canvas.draw()
    _label_panels(axes, panels, areas, legend_ax)
    return fig


def _scatter(
    ax: Any, by_runner: dict[str, list[PlotPoint]], colours: dict[str, Any], largest: int
) -> list[float]:
    """Draw one panel's points (colour: backend, marker: runner, area: artifact size); their areas."""
    areas = []
    for index, pts in enumerate(by_runner.values()):
        marker = MARKERS[index % len(MARKERS)]
        for p in pts:
            area = marker_area(p.size_bytes, largest)
            areas.append(area)
            colour = colours[p.backend]
            ax.scatter(
                [p.x],
                [p.accuracy],
                s=area,
                marker=marker,
                facecolors=colour if p.passed else "none",
                edgecolors=colour if not p.passed else "white",
                linewidths=1.4 if not p.passed else 0.6,
                alpha=0.85,
                zorder=3,
            )
    return areas


def _label_panels(axes: Sequence[Any], panels: Panels, areas: dict[int, list[float]], legend_ax: Any) -> None:
    """Name every point; if any panel cannot place its names apart, number every point of the
    figure instead (one number per configuration, the same in every panel) under one key."""
    placed = []
    clean = True
    for ax, (batch, by_runner) in zip(axes, panels.items(), strict=True):
        labels, ok = place_labels(ax, [p for pts in by_runner.values() for p in pts], areas[batch])
        placed += labels
        clean = clean and ok
    if clean:
        return
    for text in placed:
        text.remove()
    everything = [p for by_runner in panels.values() for pts in by_runner.values() for p in pts]
    numbers = label_numbers(everything)
    for ax, (batch, by_runner) in zip(axes, panels.items(), strict=True):
        pts = [replace(p, label=str(numbers[p.label])) for pts in by_runner.values() for p in pts]
        place_labels(ax, pts, areas[batch])
    _draw_key(legend_ax, [f"{n:>2}  {label}" for label, n in numbers.items()])


def frontier_path(points: Sequence[PlotPoint], right: float, worst: float) -> tuple[list[float], list[float]]:
    """The frontier's staircase (``step(where="post")``): from the worst edge of the score axis
    at the fastest frontier case, to each next frontier score as latency grows, on to ``right``.

    :param worst: the bottom of the axis for a higher-is-better score, its top for a lower-is-better one.
    """
    xs, ys = frontier_steps(points)
    if not xs:
        return [], []
    return [xs[0], *xs, right], [worst, *ys, ys[-1]]


def _draw_frontier(
    ax: Any, points: Sequence[PlotPoint], runner: str | None, style: str, higher_is_better: bool = True
) -> None:
    """The frontier as the edge of what is attainable: from the worse edge at the fastest case,
    then a staircase to the right edge, towards better scores; the frontier's own points are
    ringed so that even a one-point frontier shows.
    """
    (_, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
    path_x, path_y = frontier_path(points, right, bottom if higher_is_better else top)
    if not path_x:
        return
    xs, ys = frontier_steps(points)
    label = "Pareto frontier" + (f" ({runner})" if runner else "")
    ax.step(
        path_x,
        path_y,
        where="post",
        color="0.25",
        lw=1.2,
        ls=style,
        zorder=2,
        label=label,
    )
    ax.scatter(xs, ys, s=12, marker="*", color="0.1", zorder=4)


def _frame(ax: Any, points: Sequence[PlotPoint], axis: XAxis, batch: int) -> None:
    """One panel's horizontal limits with room for labels, its axis label with the unit, grid and title."""
    xs = [p.x for p in points]
    if wants_log_x(xs):
        from matplotlib import ticker

        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
        # Plain numbers at 1, 2 and 5 of each decade: matplotlib's default labels every minor
        # tick of a range under two decades in scientific notation, and they run into each other.
        plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
    else:
        pad = (max(xs) - min(xs)) * 0.15 or max(xs) * 0.2
        ax.set_xlim(max(0.0, min(xs) - pad), max(xs) + pad)
    scale = " (log scale)" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"{axis.label}{scale}  ←  {axis.better}")
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_title(f"batch {batch}", fontsize=10)


def _legends(ax: Any, panels: Panels, colours: dict[str, Any], largest: int) -> None:
    """Backend colours, runner markers, marker sizes and the frontier, outside the axes on the right."""
    from matplotlib.lines import Line2D

    every = [p for by_runner in panels.values() for pts in by_runner.values() for p in pts]
    runners = list(dict.fromkeys(name for by_runner in panels.values() for name in by_runner))
    used = sorted({p.backend for p in every})
    handles = [Line2D([], [], ls="", marker="o", ms=8, color=colours[b], label=b) for b in used]
    if len(runners) > 1:
        handles += [
            Line2D([], [], ls="", marker=MARKERS[i % len(MARKERS)], ms=8, color="0.4", label=f"runner {name}")
            for i, name in enumerate(runners)
        ]
    if largest:
        for fraction in (1.0, 0.25):
            size = int(largest * fraction)
            ms = math.sqrt(marker_area(size, largest))
            handles.append(
                Line2D([], [], ls="", marker="o", ms=ms, color="0.75", label=f"size {human_bytes(size)}")
            )
    if any(not p.passed for p in every):
        handles.append(
            Line2D([], [], ls="", marker="o", ms=8, mfc="none", color="0.3", label="failed a gate")
        )
    handles += [h for h in ax.get_legend_handles_labels()[0]]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        frameon=False,
        labelspacing=1.1,
    )


def backend_colours(documents: Sequence[ResultsDocument]) -> dict[str, Any]:
    """One colour per backend, the same in every figure of a report."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    tab10 = colormaps["tab10"]
    assert isinstance(tab10, ListedColormap)  # a qualitative map: a list of colours
    palette = cast(Sequence[Any], tab10.colors)  # RGB tuples; matplotlib types them as any ArrayLike
    backends = sorted({r.backend for doc in documents for r in doc.cases})
    return {b: palette[i % len(palette)] for i, b in enumerate(backends)}


def write_pareto_plots(directory: Path, documents: Sequence[ResultsDocument]) -> dict[str, list[Path]]:
    """Write ``pareto-<model>.png`` and ``.svg`` for every model with a plottable case, and
    ``pareto-<model>-energy.png``/``.svg`` for a model whose cases measured their energy.

    :returns: model -> the files written for it, the latency figure's PNG first.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = backend_colours(documents)
    models: dict[str, dict[str, list[CaseResult]]] = {}
    for doc in documents:
        for r in doc.cases:
            models.setdefault(r.model, {}).setdefault(doc.runner, []).append(r)
    written: dict[str, list[Path]] = {}
    for model in sorted(models):
        for axis in (LATENCY, ENERGY):
            fig = draw_model(model, models[model], colours, axis)
            if fig is None:
                continue
            stem = f"pareto-{model}{axis.file_suffix}"
            paths = [Path(directory) / f"{stem}.png", Path(directory) / f"{stem}.svg"]
            # No date and a fixed id salt keep the SVG byte-stable across re-renders, so it diffs well.
            with matplotlib.rc_context({"svg.hashsalt": "perfgate"}):
                fig.savefig(paths[0], bbox_inches="tight")
                fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
            plt.close(fig)
            written.setdefault(model, []).extend(paths)
    return written
