"""The end of a run: ``summary.md``, ``summary.json``, ``report.png`` and ``report.html`` in ``RUN_DIR``.

The evaluation comes first everywhere: a headline that says which encoder is best and by how
much, the table of every encoder (mean ± std over the runs, difference to the raw-fbank
baseline), then the curves (:mod:`beats_fairseq.pipeline.figure`) and the stages. The HTML
page is built from the same tables as the Markdown (:class:`beats_fairseq.tables.Table`).
"""

import base64
import html
import json
from pathlib import Path
from typing import Callable, List

from .config import ALL, PipelineConfig
from .diagnostics import combine_tokenizers, table as tokenizer_table
from .plan import Stage
from .state import State
from .summary import (budget_title, evaluation_table, headline, loops_table, paired_table, probes_table, stage_table,
                      summarise)


def _tables(summary: dict, config: PipelineConfig):
    """(title, table) of the summary, the evaluation first."""
    from ..probe import ProbeResult, probe_tables

    out = []
    if summary.get("evaluation"):
        block = summary["evaluation"]
        budgets = block.get("budgets") or {ALL: block}
        for budget, part in budgets.items():
            on = "" if len(budgets) == 1 else f", {budget_title(budget)}"
            out.append((f"Evaluation ({block['how']}{on})", evaluation_table({**block, "rows": part["rows"]})))
            if part.get("probes"):
                out.append((f"Probes on frozen features, beside fine-tuning ({config.probe_pooling} pooling{on})",
                            probes_table(block, part["probes"])))
        if any(block.get("paired", {}).values()):
            out.append(("Paired differences (per loop: mean over its evaluation seeds; mean over loops, 95 % t interval)",
                        paired_table(block["paired"])))
    if summary.get("loops"):
        out.append(("Loops", loops_table(summary["loops"])))
    if summary["stages"]:
        out.append(("Stages", stage_table(summary["stages"])))
    if summary.get("tokenizers"):
        out.append(("Tokenizer labels (purity and NMI against the classes; distillation cosine)",
                    tokenizer_table(summary["tokenizers"])))
    if summary["probe"]:
        results = [ProbeResult(**r) for r in summary["probe"]]
        kinds = dict.fromkeys(r.probe for r in results)
        out += [(f"{kind.capitalize()} probe", table) for kind, table in zip(kinds, probe_tables(results,
                                                                                               config.eval_split))]
    return out


def naming_note(config: PipelineConfig) -> str:
    """What the report's encoder names mean where they differ from the paper's ("" where they don't)."""
    if config.supervised_teacher and config.iterations >= 3:
        return ("iter3 is the paper's iter3+: its tokenizer (tokenizer_iter2) is distilled from iter2 fine-tuned "
                "on the labelled train split (finetune_iter2).")
    return ""


def markdown(summary: dict, config: PipelineConfig, title: str) -> str:
    text = [f"# {title}", ""]
    if summary.get("evaluation"):
        text += [headline(summary["evaluation"]), ""]
    if naming_note(config):
        text += [naming_note(config), ""]
    for name, table in _tables(summary, config):
        text += [f"{name}:", "", table.markdown(), ""]
    text += [f"Command: `{summary['command']}`"]
    return "\n".join(text) + "\n"


def page(summary: dict, config: PipelineConfig, title: str, png: Path) -> str:
    """``report.html``: the headline, the evaluation table, the picture, the other tables."""
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary.get("evaluation"):
        parts.append(f"<p class=\"headline\">{html.escape(headline(summary['evaluation']))}</p>")
    if naming_note(config):
        parts.append(f"<p>{html.escape(naming_note(config))}</p>")
    tables = _tables(summary, config)
    first = sum(1 for name, _ in tables if name.startswith(("Evaluation", "Paired")))  # the picture after these
    for k, (name, table) in enumerate(tables):
        if k == first:
            parts.append(f"<img alt=\"curves of every stage\" src=\"data:image/png;base64,{image}\">")
        parts += [f"<h2>{html.escape(name)}</h2>", table.html()]
    if first == len(tables):
        parts.append(f"<img alt=\"evaluation\" src=\"data:image/png;base64,{image}\">")
    parts.append(f"<p>Command: <code>{html.escape(summary['command'])}</code></p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}th{background:#eee}img{max-width:100%}"
             ".headline{font-size:120%;font-weight:bold}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{style}"
            "</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_summary(config: PipelineConfig, stages: List[Stage], state: State, command: str,
                  say: Callable[[str], None] = print) -> dict:
    """Write the summary files and the report into ``RUN_DIR``; print the Markdown summary."""
    return write_report(config, stages, summarise(config, stages, state, command), say)


def write_loops_summary(config: PipelineConfig, summaries: List[dict], command: str,
                        say: Callable[[str], None] = print) -> dict:
    """``RUN_DIR/summary.json`` (and the report) of a run of several loops: their evaluations combined
    (:func:`~.aggregate.combine`), each loop's own report in ``RUN_DIR/seed{k}``."""
    from .aggregate import combine

    loops = [{"seed": c.loop_seed, "dir": c.run_dir.name, "summary": f"{c.run_dir.name}/summary.md"}
             for c in config.loops()]
    summary = {"command": command, "loops": loops, "stages": [], "probe": []}
    blocks = [s["evaluation"] for s in summaries if s.get("evaluation")]
    if blocks:
        summary["evaluation"] = combine(blocks)
    tokenizers = combine_tokenizers([s["tokenizers"] for s in summaries if s.get("tokenizers")])
    if tokenizers:
        summary["tokenizers"] = tokenizers
    return write_report(config, [], summary, say)


def write_report(config: PipelineConfig, stages: List[Stage], summary: dict, say: Callable[[str], None]) -> dict:
    from .figure import draw_report

    run_dir = config.run_dir
    title = f"BEATs pipeline: {run_dir.name}" + (f" ({len(summary['loops'])} loop seeds)" if summary.get("loops")
                                                 else "")
    md = markdown(summary, config, title)
    (run_dir / "summary.md").write_text(md, encoding="utf-8")
    with open(run_dir / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    png = run_dir / "report.png"
    draw_report(png, stages, summary, title)
    (run_dir / "report.html").write_text(page(summary, config, title, png), encoding="utf-8")
    say("\n" + md + f"\nReport: {run_dir / 'report.html'} (picture: {png})")
    return summary
