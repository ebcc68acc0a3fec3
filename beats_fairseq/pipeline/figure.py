"""``RUN_DIR/report.png``: the evaluation first, then one panel per kind of training with its runs overlaid.

* top: which encoder is best and by how much (the headline and the evaluation as bars, mean ±
  std over the runs; dotted lines at the raw-fbank baseline and the random init);
* with several label budgets: every row's metric against the labelled clips per class (one
  line per encoder, mean ± std over the runs, budgets as categories);
* pre-training: every iteration's loss, masked-label accuracy and codebook usage of its labels;
* tokenizers: every tokenizer's loss, distillation cosine and codebook usage;
* fine-tuning: the validation loss and accuracy (or mAP) of the evaluation fine-tunings, one
  colour per encoder (mean over the seeds, band from the lowest to the highest seed), and of
  the supervised teacher.

Training curves are solid lines, validation curves dashed with markers. A panel has an axis
only for what some run logged, and a kind without curves has no panel. Curves are read from
each stage's TensorBoard events (:mod:`beats_fairseq.pipeline.events`). One colour per encoder
everywhere: a tokenizer takes the colour of the encoder it was distilled from.
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..plots import bar_chart, pyplot
from .events import TRAIN_TAGS, Curves, Series, read_curves, validation_tag
from .config import ALL
from .plan import FBANK, RANDOM, START, Stage
from .summary import headline

ITERATION_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive")
FIXED_COLOURS = {RANDOM: "tab:gray", FBANK: "tab:orange", START: "tab:cyan"}
PANELS = {  # kind: (title, [(metric, axis title)])
    "pretrain": ("Pre-training iterations", [
        ("loss", "loss (not comparable across iterations: other label sets)"),
        ("accuracy", "masked-label accuracy"), ("code_usage", "share of the label codebook used")]),
    "tokenizer": ("Tokenizers", [
        ("loss", "distillation loss"), ("cosine", "cosine to the teacher"), ("code_usage", "share of codes used")]),
    "finetune": ("Fine-tuning, by encoder (validation)", [
        ("loss", "validation loss"), ("accuracy", "validation accuracy"), ("mAP", "validation mAP")]),
}
WIDTH, ROW, DPI = 14.0, 2.9, 100


def colour(encoder: str) -> str:
    if encoder in FIXED_COLOURS:
        return FIXED_COLOURS[encoder]
    number = encoder[len("iter"):] if encoder.startswith("iter") else ""
    return ITERATION_COLOURS[(int(number) - 1) % len(ITERATION_COLOURS)] if number.isdigit() else "black"


def encoder_of(stage: Stage) -> str:
    """The encoder a stage belongs to: its own iteration, the one it fine-tunes, the teacher's."""
    if stage.encoder:
        return stage.encoder
    if stage.kind == "pretrain":
        return stage.name
    return encoder_of(stage.depends[0]) if stage.depends else stage.name


class Run:
    """A line (or a group of seeds) in a panel."""

    def __init__(self, label: str, colour: str, curves: List[Curves], style: str = "-"):
        self.label, self.colour, self.curves, self.style = label, colour, curves, style

    def series(self, metric: str, validation: bool) -> List[Series]:
        out = []
        for curves in self.curves:
            tags = [validation_tag(curves)] if validation else [t for t in TRAIN_TAGS if t in curves][:1]
            out += [curves[t][metric] for t in tags if t in curves and metric in curves[t]]
        return out


def _draw(ax, run: Run, metric: str, validation: bool) -> bool:
    series = run.series(metric, validation)
    if not series:
        return False
    if len(series) == 1:
        xs, ys = series[0]
        marker = "o" if validation else ("" if len(xs) > 2 else "s")  # a line through one or two points is hard to see
        ax.plot(xs, ys, marker + ("--" if validation else run.style), color=run.colour, markersize=4, linewidth=1.4,
                label=run.label, markerfacecolor="white" if validation else run.colour)
        return True
    points: Dict[float, List[float]] = {}  # several seeds: their mean, and a band from the lowest to the highest
    for xs, ys in series:
        for x, y in zip(xs, ys):
            points.setdefault(x, []).append(y)
    xs = sorted(points)
    ax.fill_between(xs, [min(points[x]) for x in xs], [max(points[x]) for x in xs], color=run.colour, alpha=0.15,
                    linewidth=0)
    ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], "o-" if validation else run.style,
            color=run.colour, markersize=3.5, linewidth=1.6, label=f"{run.label} ({len(series)} seeds)")
    return True


def panel_runs(stages: List[Stage]) -> Dict[str, List[Run]]:
    """``{kind: runs}`` of the training stages that logged something, in plan order."""
    panels: Dict[str, List[Run]] = {}
    groups: Dict[str, Run] = {}
    for stage in stages:
        if not stage.training:
            continue
        curves = read_curves(stage.tensorboard)
        if not curves:
            continue
        runs = panels.setdefault(stage.kind, [])
        encoder = encoder_of(stage)
        if stage.score_split:  # evaluation fine-tunings: one group per encoder and label budget
            label = encoder if stage.budget in (None, ALL) else f"{encoder}, {stage.budget}/class"
            if label not in groups:
                groups[label] = Run(label, colour(encoder), [], style="-" if stage.budget in (None, ALL) else ":")
                runs.append(groups[label])
            groups[label].curves.append(curves)
        elif stage.kind == "tokenizer":
            runs.append(Run(f"{stage.name} (from {stage.depends[0].name})", colour(encoder), [curves]))
        elif stage.kind == "finetune":
            runs.append(Run(f"{stage.name} (teacher)", colour(encoder), [curves], style="--"))
        else:
            runs.append(Run(stage.name, colour(encoder), [curves]))
    return panels


def draw_panel(fig, cell, kind: str, runs: List[Run]) -> None:
    title, metrics = PANELS[kind]
    validation_only = kind == "finetune"
    drawn = [(m, t) for m, t in metrics if any(r.series(m, True) or (not validation_only and r.series(m, False))
                                                 for r in runs)]
    grid = cell.subgridspec(1, len(drawn), wspace=0.25)
    for col, (metric, axis_title) in enumerate(drawn):
        ax = fig.add_subplot(grid[0, col])
        for run in runs:
            if not validation_only:
                _draw(ax, run, metric, validation=False)
            _draw(ax, run, metric, validation=True)
        ax.set_title(axis_title, fontsize=9)
        ax.set_xlabel("updates", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if metric == "code_usage":
            ax.set_ylim(0, 1.05)
        if col == 0:
            ax.set_ylabel(title, fontsize=10, fontweight="bold")
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles))  # train and validation lines of a run share a label
            style = "solid: training, dashed with markers: validation" if not validation_only else None
            ax.legend(unique.values(), unique.keys(), fontsize=7, title=style, title_fontsize=7)


def evaluation_bars(summary: dict) -> Optional[Tuple[str, List[str], List[float], List[float]]]:
    """(metric, row names, means, stds) of the run's evaluation, or None when there is none."""
    block = summary.get("evaluation")
    if not block or not block.get("rows"):
        return None
    rows = block["rows"]
    return (f"{block['metric']} on {block['split']}, mean ± std over runs", list(rows),
            [float(r["mean"]) for r in rows.values()], [float(r["std"]) for r in rows.values()])


def budget_lines(summary: dict) -> Optional[Tuple[List[str], Dict[str, Tuple[List[float], List[float]]]]]:
    """(budgets, {row: (means, stds) per budget, None where it has none}) with several budgets, else None."""
    budgets = (summary.get("evaluation") or {}).get("budgets") or {}
    if len(budgets) < 2:
        return None
    names = list(dict.fromkeys(n for part in budgets.values() for n in part["rows"]))
    lines = {n: ([budgets[b]["rows"].get(n, {}).get("mean") for b in budgets],
                 [budgets[b]["rows"].get(n, {}).get("std") for b in budgets]) for n in names}
    return list(budgets), lines


def draw_budgets(ax, budgets: List[str], lines: Dict[str, Tuple[List[float], List[float]]], metric: str) -> None:
    for name, (means, stds) in lines.items():
        xs = [x for x, m in enumerate(means) if m is not None]
        ax.errorbar(xs, [means[x] for x in xs], yerr=[stds[x] for x in xs], color=colour(name), marker="o",
                    capsize=3, linewidth=1.4, markersize=4, label=name, linestyle=":" if name in FIXED_COLOURS else "-")
    ax.set_xticks(range(len(budgets)), budgets)
    ax.set_xlabel("labelled clips per class (all: the whole train split)", fontsize=8)
    ax.set_ylabel(metric, fontsize=9)
    ax.set_title("label efficiency: mean ± std over runs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def draw_report(path: Path, stages: List[Stage], summary: dict, title: str) -> None:
    """Write ``report.png``: the evaluation and one panel per kind of training (see the module doc)."""
    plt = pyplot()
    bars = evaluation_bars(summary)
    panels = panel_runs(stages)
    efficiency = budget_lines(summary)
    heights = ([0.9 + 0.36 * len(bars[1])] if bars else []) + ([ROW] if efficiency else []) + [ROW] * len(panels)
    height = 0.9 + sum(heights)
    fig = plt.figure(figsize=(WIDTH, height), dpi=DPI)
    fig.suptitle(title, fontsize=13, fontweight="bold", y=1 - 0.15 / height)
    if bars:
        fig.text(0.5, 1 - 0.5 / height, headline(summary["evaluation"]), ha="center", fontsize=10.5)
    if not heights:
        fig.text(0.5, 0.3, "nothing has finished yet", ha="center", color="gray")
    else:
        grid = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.45, top=1 - 0.85 / height,
                                bottom=0.45 / height, left=0.08, right=0.98)
        row = 0
        if bars:
            metric, names, values, stds = bars
            runs = [len(summary["evaluation"]["rows"][n]["runs"]) for n in names]
            ax = fig.add_subplot(grid[0])
            best = max(range(len(values)), key=values.__getitem__)
            bar_chart(ax, [f"{n} (n={k})" if k > 1 else n for n, k in zip(names, runs)], values, stds, xlabel=metric,
                      colors=[colour(n) for n in names])
            ax.get_yticklabels()[best].set_fontweight("bold")
            for reference in (FBANK, RANDOM):
                if reference in names:
                    ax.axvline(values[names.index(reference)], color=colour(reference), linestyle=":", linewidth=1.2)
            largest = list((summary["evaluation"].get("budgets") or {ALL: None}))[-1]
            on = "" if not efficiency else " with all labelled clips" if largest == ALL else f" with {largest} per class"
            ax.set_title(f"evaluation{on} (dotted: fbank baseline and random init)", fontsize=10)
            row = 1
        if efficiency:
            draw_budgets(fig.add_subplot(grid[row]), *efficiency, summary["evaluation"]["metric"])
            row += 1
        for kind in PANELS:
            if kind in panels:
                draw_panel(fig, grid[row], kind, panels[kind])
                row += 1
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
