"""beats-pipeline, pictures: ``RUN_DIR/report.png`` and ``RUN_DIR/report.html``.

One row per training stage, from the metrics lines of its ``train.log`` (the pipeline runs
fairseq with ``common.log_format=json``; simple-format lines are read too):

* loss over updates (training every ``common.log_interval`` updates, and validation);
* the stage's score: masked-label accuracy (pre-training), distillation cosine (tokenizers),
  accuracy or mAP (fine-tuning);
* codebook usage (share of the K codes used) and perplexity: of the quantizer for tokenizer
  stages, of the tokenizer's labels for pre-training stages;

and a last row with the evaluation as bars: the ``evaluation`` block of ``summary.json`` where
there is one (``{name: {"mean", "std", "runs"}}``), else the linear probe of every iteration
beside the random encoder. The HTML page embeds the picture and the tables of ``summary.md``.
"""

import base64
import html
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..plots import bar_chart, pyplot
from .pipeline_report import read_records

Series = Dict[str, Tuple[List[float], List[float]]]  # metric -> (updates, values)
SCORES = {"pretrain": [("accuracy", "masked-label accuracy")], "tokenizer": [("cosine", "distillation cosine")],
          "finetune": [("mAP", "mAP"), ("accuracy", "accuracy")]}
COLORS = {"random": "tab:gray", "fbank": "tab:orange"}


def _series(rows: List[dict]) -> Series:
    by_metric: Dict[str, Dict[float, float]] = {}
    for metrics in rows:
        x = metrics.get("num_updates")
        if not isinstance(x, float):
            continue
        for key, value in metrics.items():
            if isinstance(value, float) and key != "num_updates":
                by_metric.setdefault(key, {})[x] = value  # a resumed run logs some updates again: keep the last
    return {k: (sorted(v), [v[x] for x in sorted(v)]) for k, v in by_metric.items()}


def stage_curves(log_path: Path) -> Dict[str, Series]:
    """``{"train": series, "valid": series}`` of a fairseq log (``train_inner`` lines, else epoch lines)."""
    records = read_records(log_path)
    train = [m for kind, m in records if kind == "train_inner"] or [m for kind, m in records if kind == "train"]
    return {"train": _series(train), "valid": _series([m for kind, m in records if kind == "valid"])}


def _plot(ax, curves: Dict[str, Series], key: str, label: str, color: str = "tab:blue") -> bool:
    drawn = False
    for split, style in (("train", "-"), ("valid", "o--")):
        if key in curves[split]:
            xs, ys = curves[split][key]
            if split == "train" and len(xs) < 3:
                style = "s-"  # a line through one or two points is hard to see
            ax.plot(xs, ys, style, color=color, label=f"{label} ({split})", markersize=4, linewidth=1.3)
            drawn = True
    return drawn


def _items(curves: Dict[str, Series], key: str):
    return [curves[split][key] for split in ("train", "valid") if key in curves[split]]


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def draw_stage(axes, name: str, title: str, kind: str, curves: Dict[str, Series]) -> None:
    loss_ax, score_ax, code_ax = axes
    if _plot(loss_ax, curves, "loss", "loss"):
        loss_ax.set_ylabel(name, fontsize=11, fontweight="bold")
        loss_ax.legend(fontsize=8)
    else:
        _empty(loss_ax, f"{name}: no metrics in train.log")
    loss_ax.set_title(f"{title}: loss", fontsize=10)
    for key, label in SCORES.get(kind, []):
        if _plot(score_ax, curves, key, label, "tab:green"):
            score_ax.set_title(label, fontsize=10)
            score_ax.legend(fontsize=8)
            break
    else:
        _empty(score_ax, "no score logged")
    if _plot(code_ax, curves, "code_usage", "usage", "tab:purple"):
        # no legend here: the axes' colours say which is which, line styles as in the other panels
        code_ax.set_ylim(0, 1.05)
        code_ax.set_ylabel("share of codes used", color="tab:purple")
        what = "quantizer" if kind == "tokenizer" else "tokenizer labels"
        code_ax.set_title(f"codebook usage and perplexity ({what})", fontsize=10)
        twin = code_ax.twinx()
        if _plot(twin, curves, "code_perplexity", "perplexity", "tab:red"):
            top = max(max(ys) for _, ys in _items(curves, "code_perplexity"))
            twin.set_ylim(0, top * 1.15)  # from 0, so that small changes look small
        twin.set_ylabel("perplexity", color="tab:red")
    else:
        _empty(code_ax, "no codebook")
    for ax in axes:
        if ax.has_data():
            ax.set_xlabel("updates")
            ax.grid(alpha=0.3)


def evaluation_bars(summary: dict) -> Optional[Tuple[str, List[str], List[float], Optional[List[float]]]]:
    """(metric, names, values, stds) of the run's evaluation, or None when there is none."""
    block, probe = summary.get("evaluation"), summary.get("probe") or []
    if block:
        rows = block.get("rows", block) if isinstance(block, dict) else block
        items = list(rows.items()) if isinstance(rows, dict) else [(r.get("name", r.get("encoder")), r) for r in rows]
        items = [(str(n), r) for n, r in items if isinstance(r, dict) and "mean" in r]
        if items:
            def label(name, row):
                runs = row.get("runs")
                runs = len(runs) if isinstance(runs, list) else runs
                return f"{name} (n={runs})" if isinstance(runs, int) and runs > 1 else name

            metric = block.get("metric") if isinstance(block, dict) else None
            metric = metric or (f"linear probe {probe[0]['metric']}" if probe else "score")
            return (f"{metric}, mean ± std over runs", [label(n, r) for n, r in items],
                    [float(r["mean"]) for _, r in items], [float(r.get("std") or 0.0) for _, r in items])
    if not probe:
        return None
    return (f"linear probe {probe[0]['metric']}", [r["encoder"] for r in probe], [float(r["value"]) for r in probe],
            None)


def draw_report(path: Path, stages: List[Tuple[str, str, str, Dict[str, Series]]], summary: dict,
                title: str) -> None:
    """``stages``: (name, title, kind, curves) of every training stage."""
    plt = pyplot()
    bars = evaluation_bars(summary)
    n_rows = max(1, len(stages)) + (1 if bars else 0)
    heights = [3.0] * max(1, len(stages)) + ([0.5 + 0.45 * len(bars[1])] if bars else [])
    height = sum(heights) + 0.8
    fig = plt.figure(figsize=(15, height), dpi=90)
    grid = fig.add_gridspec(n_rows, 3, height_ratios=heights, hspace=0.55, wspace=0.32, top=1 - 0.75 / height,
                            bottom=0.4 / height)
    for row, (name, stage_title, kind, curves) in enumerate(stages):
        draw_stage([fig.add_subplot(grid[row, col]) for col in range(3)], name, stage_title, kind, curves)
    if not stages:
        _empty(fig.add_subplot(grid[0, :]), "no training stage has finished")
    if bars:
        metric, names, values, stds = bars
        ax = fig.add_subplot(grid[n_rows - 1, :])
        colors = [COLORS.get(n.split(" ")[0], "tab:blue") for n in names]
        bar_chart(ax, names, values, stds, xlabel=metric, colors=colors)
        if names[0].startswith("random"):
            ax.axvline(values[0], color="tab:gray", linestyle=":", linewidth=1)
        ax.set_title(f"evaluation: {metric} (dotted line: random initialisation)" if names[0].startswith("random")
                     else f"evaluation: {metric}", fontsize=10)
    fig.suptitle(title, fontsize=12, y=1 - 0.2 / height)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def markdown_to_html(text: str) -> str:
    """The headings, paragraphs and pipe tables of summary.md as HTML."""
    out: List[str] = []
    table: List[List[str]] = []

    def inline(cell: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(cell.strip()))

    def flush() -> None:
        if table:
            head, body = table[0], [r for r in table[1:] if not all(set(c.strip()) <= set("-:") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line.strip().strip("|").split("|"))
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def write_report(run_dir: Path, stages, summary: dict, summary_md: str) -> Tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``run_dir``; ``stages`` are the pipeline's stages."""
    from .pipeline_stages import KINDS

    curves = [(s.name, s.title, s.kind, stage_curves(s.log_path)) for s in stages if s.kind in KINDS]
    png = run_dir / "report.png"
    draw_report(png, curves, summary, f"BEATs pipeline: {run_dir.name}")
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>BEATs pipeline report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:90%}th{background:#eee}img{max-width:100%}"
            "</style></head><body>\n" + markdown_to_html(summary_md)
            + f"\n<h2>Curves and evaluation</h2>\n<img alt=\"report.png\" src=\"data:image/png;base64,{image}\">\n"
            "</body></html>\n")
    page_path = run_dir / "report.html"
    page_path.write_text(page, encoding="utf-8")
    return png, page_path
