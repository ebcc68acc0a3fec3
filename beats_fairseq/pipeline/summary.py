"""What a run gives: ``summary.json``'s content (:func:`summarise`), its tables and its headline.

Everything comes from ``state.json``: each stage's last metrics (from its TensorBoard events),
the probe's rows, the fine-tunings' scores, the fbank baseline and the tokenizer diagnostics.

``summary.json``: ``{"command", "stages": [row per stage], "probe": [probe rows], "evaluation":
{"metric", "split", "how", "rows": {name: {"mean", "std", "runs"}}, "budgets": {budget: {"rows"}},
"paired": {budget: {"iter1-fbank" | "iter2-iter1" | ...: {"mean", "low", "high", "runs"}}}}}`` (``evaluation`` only
when something was evaluated; ``rows`` is the largest budget's; :mod:`.aggregate`), and ``"tokenizers":
{iteration: row}`` and ``evaluation.probes`` (:mod:`.diagnostics`).
"""

from typing import Dict, List

from ..tables import Table
from .aggregate import budget_block, evaluation_block  # noqa: F401 (evaluation_block: the one-budget block)
from .config import ALL, PipelineConfig
from .diagnostics import probe_block, summary_block as tokenizer_block
from .plan import FBANK, RANDOM, Stage
from .state import State

SCORES = {"pretrain": ("accuracy", "masked acc."), "tokenizer": ("cosine", "cosine")}


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


# ---------------------------------------------------------------------------- stages
def stage_row(stage: Stage, entry: dict) -> dict:
    metrics = entry.get("metrics") or {}
    train, valid, inner = metrics.get("train", {}), metrics.get("valid", {}), metrics.get("train_inner", {})
    updates = valid.get("num_updates", train.get("num_updates", inner.get("num_updates")))
    row = {"stage": stage.name, "what": stage.title, "status": entry.get("status", "pending"),
           "seconds": round(float(entry.get("seconds", 0.0)), 1),
           "updates": None if updates is None else int(updates),
           "train_loss": train.get("loss", inner.get("loss")), "valid_loss": valid.get("loss")}
    if stage.kind in SCORES:
        key, row["score_name"] = SCORES[stage.kind]
        row["score"] = valid.get(key, train.get(key, inner.get(key)))
        first, second = (valid, train) if stage.kind == "pretrain" else (train, inner)
        row["code_usage"] = first.get("code_usage", second.get("code_usage"))
        row["code_perplexity"] = valid.get("code_perplexity", train.get("code_perplexity",
                                                                         inner.get("code_perplexity")))
    elif stage.kind == "finetune":
        row["score_name"] = "mAP" if "mAP" in valid else "accuracy"
        row["score"] = valid.get(row["score_name"])
    return row


def stage_table(rows: List[dict]) -> Table:
    table = Table(["stage", "what", "updates", "train loss", "valid loss", "masked acc. / cosine / acc.",
                   "codebook usage (perplexity)", "time", "status"])
    for r in rows:
        score = "-" if r.get("score") is None else f"{_fmt(r['score'])} ({r['score_name']})"
        usage = "-" if r.get("code_usage") is None else \
            f"{_fmt(r['code_usage'], 3)} ({_fmt(r.get('code_perplexity'), 1)})"
        table.add(r["stage"], r["what"], "-" if r.get("updates") is None else r["updates"], _fmt(r.get("train_loss")),
                  _fmt(r.get("valid_loss")), score, usage, format_seconds(r["seconds"]), r["status"])
    return table


# ---------------------------------------------------------------------------- evaluation
def evaluation_table(block: dict) -> Table:
    rows = block["rows"]
    base = rows.get(FBANK, {}).get("mean")
    table = Table(["encoder", f"{block['metric']} on {block['split']} (mean ± std)", "vs fbank", "runs"])
    for name, row in rows.items():
        delta = "" if base is None or name == FBANK else f"{row['mean'] - base:+.3f}"
        table.add(name, f"{row['mean']:.3f} ± {row['std']:.3f}", delta, ", ".join(f"{v:.3f}" for v in row["runs"]))
    return table


def probes_table(block: dict, probes: Dict[str, Dict[str, dict]]) -> Table:
    """Every encoder's score through each probe run beside fine-tuning (``budgets[b]["probes"]``)."""
    encoders = list(dict.fromkeys(name for rows in probes.values() for name in rows))
    table = Table(["encoder", *(f"{probe} probe, {block['metric']} (mean ± std)" for probe in probes)])
    for name in encoders:
        table.add(name, *(f"{rows[name]['mean']:.3f} ± {rows[name]['std']:.3f}" if name in rows else "-"
                          for rows in probes.values()))
    return table


def budget_title(budget: str) -> str:
    return "all labelled clips" if budget == ALL else f"{budget} clips per class"


def paired_table(paired: dict) -> Table:
    table = Table(["labels", "difference", "mean", "95 % interval", "per loop"])
    for budget, pairs in paired.items():
        for name, row in pairs.items():
            interval = "-" if row["low"] is None else f"[{row['low']:+.3f}, {row['high']:+.3f}]"
            table.add(budget_title(budget), name, f"{row['mean']:+.3f}", interval,
                      ", ".join(f"{v:+.3f}" for v in row["runs"]))
    return table


def loops_table(loops: List[dict]) -> Table:
    table = Table(["loop seed", "folder", "its report"])
    for loop in loops:
        table.add(loop["seed"], loop["dir"], loop["summary"])
    return table


def headline(block: dict) -> str:
    """Which row is best and by how much: ``"Best: iter1, accuracy 0.357 ± 0.012 on test (3 runs); +0.040 over
    iter2 (within the spread over runs), +0.052 over fbank, +0.130 over random."``; when the best row is not a
    pre-trained encoder (fbank, random), the best encoder too."""
    rows = block["rows"]

    def value(name: str) -> str:
        row = rows[name]
        return f"{row['mean']:.3f}" + (f" ± {row['std']:.3f}" if len(row["runs"]) > 1 else "")

    def gap(name: str) -> str:
        diff, spread = rows[best]["mean"] - rows[name]["mean"], max(rows[best]["std"], rows[name]["std"])
        return f"{diff:+.3f} over {name}" + (" (within the spread over runs)" if diff < spread else "")

    ranked = sorted(rows, key=lambda n: rows[n]["mean"], reverse=True)
    best, runs = ranked[0], len(rows[ranked[0]]["runs"])
    text = f"Best: {best}, {block['metric']} {value(best)} on {block['split']}" + (f" ({runs} runs)" if runs > 1 else "")
    others = [name for name in ranked[1:2] + [FBANK, RANDOM] if name in rows and name != best]
    if others:
        text += "; " + ", ".join(gap(name) for name in dict.fromkeys(others))
    encoders = [name for name in ranked if name not in (FBANK, RANDOM)]
    if best in (FBANK, RANDOM) and encoders:
        first = encoders[0]
        text += f". Best pre-trained encoder: {first}, {value(first)} ({rows[first]['mean'] - rows[best]['mean']:+.3f} " \
            f"against {best})"
    return text + "."


def evaluation(config: PipelineConfig, stages: List[Stage], state: State) -> dict:
    """The ``evaluation`` block: per label budget, random, fbank and every iteration, one value per run."""
    runs: Dict[str, Dict[str, List[float]]] = {b: {} for b in config.budgets()}
    beside: Dict[str, Dict[str, Dict[str, List[float]]]] = {}  # the probes run beside fine-tuning
    fbanks: Dict[str, List[float]] = {}  # one per subset of a budget (one for all)
    metric = None
    for stage in stages:
        metrics = state.stage(stage.name).get("metrics", {})
        if stage.kind == "probe":
            for r in metrics.get("probe", []):
                probe = r.get("probe", "linear")
                if config.eval != "probe":
                    beside.setdefault(stage.budget, {}).setdefault(probe, {}).setdefault(r["encoder"], []).append(
                        r["value"])
                elif probe == "linear":
                    runs[stage.budget].setdefault(r["encoder"], []).append(r["value"])
                    metric = r["metric"]
        elif stage.score_split and metrics.get("score"):
            runs[stage.budget].setdefault(stage.encoder, []).append(metrics["score"]["value"])
            metric = metrics["score"]["metric"]
        elif stage.kind == "fbank" and metrics.get("fbank"):
            fbanks.setdefault(stage.budget, []).append(metrics["fbank"]["value"])
            metric = metric or metrics["fbank"]["metric"]
    for budget, values in fbanks.items():
        rows = runs[budget]
        runs[budget] = {**{k: v for k, v in rows.items() if k == RANDOM}, FBANK: values,
                        **{k: v for k, v in rows.items() if k != RANDOM}}
    if config.eval == "probe":
        layer = "last layer" if config.probe_layer is None else f"layer {config.probe_layer}"
        how = f"linear probe, {config.probe_pooling} pooling, {layer}"
    else:
        how = f"fine-tuned ({config.eval_seeds} seeds), best-validation checkpoint"
    return budget_block(metric, config.eval_split, runs, how, beside) if any(runs.values()) else {}


# ---------------------------------------------------------------------------- summary.json
def summarise(config: PipelineConfig, stages: List[Stage], state: State, command: str) -> dict:
    """The content of ``summary.json``."""
    rows = [stage_row(stage, state.stage(stage.name)) for stage in stages]
    probes = [s for s in stages if s.kind == "probe"]  # the largest budget's rows
    probe = state.stage(probes[-1].name).get("metrics", {}).get("probe", []) if probes else []
    summary = {"command": command, "stages": rows, "probe": probe}
    tokenizers = tokenizer_block(stages, state)
    if tokenizers:
        summary["tokenizers"] = tokenizers
    block = evaluation(config, stages, state) if config.evaluate else {}
    if block and probe:
        block["probes"] = probe_block(probe)
    if block:
        summary["evaluation"] = block
    return summary
