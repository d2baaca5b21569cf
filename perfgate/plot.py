"""Pareto plots: each model's metric against p50 latency, one figure per model, as PNG and SVG.

The metric's axis keeps its natural orientation (larger values up) and says which way is better;
for a lower-is-better metric (MSE) the frontier hangs from the top, the better cases below it.

matplotlib is imported only here and only when a plot is drawn (the ``report`` extra), with the
non-interactive Agg backend so that a CI runner without a display can draw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from perfgate.pareto import Score, model_score
from perfgate.results import CaseResult, ResultsDocument
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


@dataclass(frozen=True)
class PlotPoint:
    """One case on the plot."""

    label: str
    latency_ms: float
    accuracy: float
    size_bytes: int | None
    backend: str
    runner: str
    passed: bool
    frontier: bool = False


def plot_points(
    cases: Sequence[CaseResult], runner: str, with_batch: bool, score: Score | None = None
) -> list[PlotPoint]:
    """The timed, scored cases of one model on one runner, each marked on or off its frontier.

    :param with_batch: add the batch size to labels (the model ran at several).
    :param score: what ``accuracy`` holds and which way is better; ``model_score(cases)`` if not given.
    """
    score = score or model_score(cases)
    front = score.front(cases)
    return [
        PlotPoint(
            label=r.technique + (f" b{r.batch_size}" if with_batch else ""),  # the colour says the backend
            latency_ms=r.latency.p50_ms,
            accuracy=value,
            size_bytes=r.artifact_bytes,
            backend=r.backend,
            runner=runner,
            passed=r.status == "passed" and not any(v.failed for v in r.verdicts),
            frontier=front[r.case_id],
        )
        for r in cases
        # score.front() keeps only timed and scored cases: the last two tests narrow the types
        if r.case_id in front and r.latency is not None and (value := score.value(r)) is not None
    ]


def frontier_steps(points: Sequence[PlotPoint]) -> tuple[list[float], list[float]]:
    """The frontier as a staircase: from each frontier point, its score holds until the next is reached."""
    front = sorted((p.latency_ms, p.accuracy) for p in points if p.frontier)
    return [x for x, _ in front], [y for _, y in front]


def wants_log_x(latencies: Sequence[float]) -> bool:
    """A log axis when the cases span enough that a linear one would squash the fast ones together."""
    positive = [x for x in latencies if x > 0]
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
        x, y = ax.transData.transform((point.latency_ms, point.accuracy))
        r = math.sqrt(area) / 2 * px_per_pt
        obstacles.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
    labels, clean = [], True
    # Frontier points first: their labels matter most and get the closest spots.
    for index in sorted(range(len(points)), key=lambda i: (not points[i].frontier, points[i].latency_ms)):
        text, cost = _place_one(ax, points[index], obstacles, frame, renderer, areas[index])
        labels.append(text)
        clean = clean and cost == 0
    return labels, clean


def numbered(points: Sequence[PlotPoint]) -> tuple[list[PlotPoint], list[str]]:
    """Points labelled by number, one number per distinct label in latency order, and the key.

    The fallback for a crowded plot (many variants tied on accuracy, or several runners): a
    number fits where a name does not, and one configuration keeps its number on every runner.
    """
    numbers: dict[str, int] = {}
    for point in sorted(points, key=lambda p: p.latency_ms):
        numbers.setdefault(point.label, len(numbers) + 1)
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
        (point.latency_ms, point.accuracy),
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


def plot_title(model: str, score: Score, runners: Sequence[str]) -> str:
    """``<model>: <metric> vs p50 latency  —  runner <names>``."""
    plural = "s" if len(runners) > 1 else ""
    return f"{model}: {score.header} vs p50 latency  —  runner{plural} {', '.join(runners)}"


def draw_model(model: str, runners: dict[str, list[CaseResult]], colours: dict[str, Any]) -> Any | None:
    """The Pareto figure of one model across its runners, or ``None`` if no case is plottable.

    :param runners: runner -> that runner's cases of the model.
    :param colours: backend -> colour, shared by every figure of the report.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = {r.batch_size for cases in runners.values() for r in cases}
    score = model_score([r for cases in runners.values() for r in cases])  # one axis for every runner
    by_runner = {name: plot_points(cases, name, len(batches) > 1, score) for name, cases in runners.items()}
    points = [p for pts in by_runner.values() for p in pts]
    if not points:
        return None
    largest = max((p.size_bytes or 0) for p in points)
    fig, ax = plt.subplots(figsize=(10, 6.2), dpi=130)
    fig.subplots_adjust(left=0.09, right=0.74, top=0.9, bottom=0.11)
    if wants_log_x([p.latency_ms for p in points]):
        ax.set_xscale("log")
    areas = []
    for index, pts in enumerate(by_runner.values()):
        marker = MARKERS[index % len(MARKERS)]
        for p in pts:
            area = marker_area(p.size_bytes, largest)
            areas.append(area)
            colour = colours[p.backend]
            ax.scatter(
                [p.latency_ms],
                [p.accuracy],
                s=area,
                marker=marker,
                facecolors=colour if p.passed else "none",
                edgecolors=colour if not p.passed else "white",
                linewidths=1.4 if not p.passed else 0.6,
                alpha=0.85,
                zorder=3,
            )
    _frame(ax, points, model, runners, score)
    for index, (name, pts) in enumerate(by_runner.items()):
        style = ("-", "--", ":", "-.")[index % 4]
        _draw_frontier(ax, pts, name if len(by_runner) > 1 else None, style, score.higher_is_better)
    _legends(ax, by_runner, colours, largest)
    fig.canvas.draw()
    labels, clean = place_labels(ax, points, areas)
    if not clean:
        for text in labels:
            text.remove()
        by_number, key = numbered(points)
        place_labels(ax, by_number, areas)
        _draw_key(ax, key)
    return fig


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


def _frame(
    ax: Any, points: Sequence[PlotPoint], model: str, runners: dict[str, list[CaseResult]], score: Score
) -> None:
    """Limits with room for labels, axis labels with units, grid and title."""
    xs = [p.latency_ms for p in points]
    ys = [p.accuracy for p in points]
    if ax.get_xscale() == "log":
        ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    else:
        pad = (max(xs) - min(xs)) * 0.15 or max(xs) * 0.2
        ax.set_xlim(max(0.0, min(xs) - pad), max(xs) + pad)
    spread = (max(ys) - min(ys)) or 0.01
    ax.set_ylim(min(ys) - spread * 0.4, max(ys) + spread * 0.4)
    scale = " (log scale)" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"p50 latency per call (ms){scale}  ←  faster")
    ax.set_ylabel(axis_label(score))
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_title(plot_title(model, score, list(runners)), fontsize=11)


def _legends(ax: Any, by_runner: dict[str, list[PlotPoint]], colours: dict[str, Any], largest: int) -> None:
    """Backend colours, runner markers, marker sizes and the frontier, outside the axes on the right."""
    from matplotlib.lines import Line2D

    used = sorted({p.backend for pts in by_runner.values() for p in pts})
    handles = [Line2D([], [], ls="", marker="o", ms=8, color=colours[b], label=b) for b in used]
    if len(by_runner) > 1:
        handles += [
            Line2D([], [], ls="", marker=MARKERS[i % len(MARKERS)], ms=8, color="0.4", label=f"runner {name}")
            for i, name in enumerate(by_runner)
        ]
    if largest:
        for fraction in (1.0, 0.25):
            size = int(largest * fraction)
            ms = math.sqrt(marker_area(size, largest))
            handles.append(
                Line2D([], [], ls="", marker="o", ms=ms, color="0.75", label=f"size {human_bytes(size)}")
            )
    if any(not p.passed for pts in by_runner.values() for p in pts):
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
    """Write ``pareto-<model>.png`` and ``.svg`` for every model with a plottable case.

    :returns: model -> the files written for it.
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
        fig = draw_model(model, models[model], colours)
        if fig is None:
            continue
        paths = [Path(directory) / f"pareto-{model}.png", Path(directory) / f"pareto-{model}.svg"]
        # No date and a fixed id salt keep the SVG byte-stable across re-renders, so it diffs well.
        with matplotlib.rc_context({"svg.hashsalt": "perfgate"}):
            fig.savefig(paths[0], bbox_inches="tight")
            fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
        plt.close(fig)
        written[model] = paths
    return written
