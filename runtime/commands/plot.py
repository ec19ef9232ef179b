"""`netc plot RUN_DIR... -o curves.png`: training curves from runs' metrics.jsonl.

One panel per quantity — the loss (the displayed train loss and the TEST net's `loss` output),
each other TEST-net output (accuracy...), the learning rate — in a grid of up to two columns.
Each run has its colour (its directory name in the legend); train is a solid line, test a
dashed one with a marker per test pass. Matplotlib through its object API (Figure + the Agg
canvas), so no GUI backend and no global pyplot state is involved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TextIO

from netc.runtime.commands.runs import Run, read_run
from netc.runtime.errors import EXIT_OK, RunError

__all__ = ["run", "quantities", "PANEL_SIZE", "DPI"]

PANEL_SIZE = (6.0, 3.6)  # inches per panel
DPI = 100
FORMATS = (".png", ".svg", ".pdf")
LEGEND_H = 0.5  # inches above the panels for the figure's legend


def quantities(runs: list[Run]) -> list[str]:
    """What can be plotted: "loss", each TEST-net output other than loss, "lr"."""
    metrics: dict[str, None] = {}
    for r in runs:
        metrics.update(dict.fromkeys(m for m in r.test_metrics() if m != "loss"))
    return ["loss", *metrics, "lr"]


def _choose(runs: list[Run], wanted: tuple[str, ...]) -> list[str]:
    from netc.spec.errors import did_you_mean

    have = quantities(runs)
    for name in wanted:
        if name not in have:
            raise RunError(
                f"--metric {name}: no such quantity in "
                f"{'this run' if len(runs) == 1 else 'these runs'}"
                f"{did_you_mean(name, have)}; choose from {', '.join(have)}"
            )
    return [q for q in have if q in wanted] if wanted else have


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else math.nan


def _series(run: Run, quantity: str) -> list[tuple[str, list[int], list[float]]]:
    """(line kind, iterations, values) for one panel: its "train" and/or "test" line."""
    out = []
    if quantity in ("loss", "lr"):
        train = run.events("train")
        out.append(("train", [r["iter"] for r in train], [_num(r.get(quantity)) for r in train]))
    if quantity != "lr":
        test = [r for r in run.events("test") if quantity in (r.get("metrics") or {})]
        out.append(
            ("test", [r["iter"] for r in test], [_num(r["metrics"][quantity]) for r in test])
        )
    return [s for s in out if s[1]]


_TITLES = {"loss": "loss", "lr": "learning rate"}
_STYLE = {
    "train": {"linestyle": "-"},
    "test": {"linestyle": "--", "marker": "o", "markersize": 3.5},
}


def _draw(ax, runs: list[Run], quantity: str, log_y: bool) -> None:
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    colours = mpl.colormaps["tab10"].colors
    for i, r in enumerate(runs):
        for kind, xs, ys in _series(r, quantity):
            ax.plot(xs, ys, color=colours[i % len(colours)], linewidth=1.4, **_STYLE[kind])
    ax.set_title(_TITLES.get(quantity, f"test {quantity}"), fontsize=11)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if log_y:
        _log_y(ax)


def _log_y(ax) -> None:
    """A log y axis labelled in plain numbers (0.5, 2 rather than 5×10^-1), its minor ticks
    too when the panel spans less than a decade (else only the powers of ten)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if hi < 10 * lo else NullFormatter())


def _legend(fig, runs: list[Run]) -> None:
    import matplotlib as mpl
    from matplotlib.lines import Line2D

    colours = mpl.colormaps["tab10"].colors
    handles = [
        Line2D([], [], color=colours[i % len(colours)], linewidth=2, label=r.name)
        for i, r in enumerate(runs)
    ]
    handles += [Line2D([], [], color="0.3", label=kind, **_STYLE[kind]) for kind in _STYLE]
    fig.legend(
        handles=handles,
        loc="outside upper center",
        ncols=min(len(handles), 5),
        frameon=False,
        fontsize=9,
    )


def figure(runs: list[Run], panels: list[str], log_y: bool):
    """The matplotlib Figure: the panels in a grid of up to two columns, the legend on top
    (the runs' colours, then the train and test line styles)."""
    from matplotlib.figure import Figure

    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    w, h = PANEL_SIZE
    fig = Figure(figsize=(w * cols, h * rows + LEGEND_H), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, q in zip(axes, panels):
        _draw(ax, runs, q, log_y)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _legend(fig, runs)
    return fig


def run(
    run_dirs: tuple[str, ...], output: str, metrics: tuple[str, ...], log_y: bool, err: TextIO
) -> int:
    path = Path(output)
    if path.suffix.lower() not in FORMATS:
        raise RunError(f"-o {output}: the file name must end in {', '.join(FORMATS)}")
    runs = [read_run(d) for d in run_dirs]
    empty = [r.name for r in runs if not r.events("train") and not r.events("test")]
    if len(empty) == len(runs):
        raise RunError(
            f"{', '.join(run_dirs)}: nothing to plot yet (no train or test events in metrics.jsonl)"
        )
    panels = _choose(runs, metrics)
    fig = figure(runs, panels, log_y)
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise RunError(f"-o {output}: cannot write the figure: {e.strerror or e}") from None
    err.write(
        f"wrote {output} ({len(panels)} panel{'s' if len(panels) != 1 else ''}, "
        f"{len(runs)} run{'s' if len(runs) != 1 else ''})\n"
    )
    return EXIT_OK
